"""The checkpoint keys' code part (``pipelines/training/code_key.py``): every ``models`` file a model runs is in it,
documentation is not."""
from __future__ import annotations

import shutil

from pipelines.training import llmrec
from pipelines.training.code_key import MODELS_DIR, model_files, source_hash


def _copy(tmp_path):
    d = tmp_path / "models"
    shutil.copytree(MODELS_DIR, d, ignore=shutil.ignore_patterns("__pycache__"))
    return d


def test_the_llm_recommenders_key_covers_the_mp_head_and_what_else_it_imports(tmp_path):
    assert [f.name for f in model_files("models.llmrec")] == ["llmrec.py", "configs.py", "mp_head.py", "sasrec.py", "items.py"]
    d = _copy(tmp_path)
    key = llmrec.code_version(d)
    assert key == llmrec.code_version()                                   # a copy is the same code
    head = d / "mp_head.py"
    text = head.read_text()
    first = text.index('"""', text.index("def ")) + 3                     # the first function's docstring
    head.write_text(text[:first] + "Reworded. " + text[first:] + "\n# a comment\n")
    assert llmrec.code_version(d) == key                                  # documentation: same key, resumes
    head.write_text(text + "\nSCALE = 2.0\n")
    assert llmrec.code_version(d) != key                                  # code: a new key, trains afresh
    head.write_text(text)
    (d / "sasrec.py").write_text((d / "sasrec.py").read_text() + "\nNEVER = 0\n")
    assert llmrec.code_version(d) != key                                  # never_candidates' module too


def test_source_hash_is_the_trees_without_docstrings(tmp_path):
    a, b, c = tmp_path / "a.py", tmp_path / "b.py", tmp_path / "c.py"
    a.write_text('"""Doc."""\ndef f(x):\n    """Doc."""\n    return x + 1\n')
    b.write_text("def f(x):  # no doc\n    return x + 1\n")
    c.write_text("def f(x):\n    return x + 2\n")
    assert source_hash([a]).hexdigest() == source_hash([b]).hexdigest() != source_hash([c]).hexdigest()
