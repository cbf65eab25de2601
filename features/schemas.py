"""Table schemas, declared once. Every write is checked against these (``check_schema``).

Id columns of raw tables are strings (the source's own ids); the split assigns contiguous integer
indices: users ``0..U-1``, items ``1..N`` (0 is padding for sequence models).
"""
from __future__ import annotations

import pyarrow as pa

from features.errors import DataError

# Raw tables ---------------------------------------------------------------------------------
INTERACTIONS = pa.schema([
    pa.field("user_id", pa.string(), nullable=False),
    pa.field("item_id", pa.string(), nullable=False),
    pa.field("timestamp", pa.int64(), nullable=False),   # seconds since epoch (or position when the source has none)
    pa.field("event_order", pa.int64(), nullable=False),  # row order in the source: the documented tie-break
    pa.field("rating", pa.float32()),
])

ITEMS = pa.schema([
    pa.field("item_id", pa.string(), nullable=False),
    pa.field("title", pa.string()),
    pa.field("brand", pa.string()),
    pa.field("categories", pa.list_(pa.string())),
    pa.field("description", pa.string()),
    pa.field("price", pa.float64()),
])

USERS = pa.schema([
    pa.field("user_id", pa.string(), nullable=False),
    pa.field("external_id", pa.string()),
    pa.field("first_seen", pa.int64()),
])

# Split outputs ------------------------------------------------------------------------------
SEQUENCES = pa.schema([
    pa.field("user_idx", pa.int32(), nullable=False),
    pa.field("item_idx", pa.int32(), nullable=False),
    pa.field("position", pa.int32(), nullable=False),  # 0-based, time order
    pa.field("split", pa.string(), nullable=False),    # train | valid | test
])

USER_MAP = pa.schema([
    pa.field("user_idx", pa.int32(), nullable=False),
    pa.field("user_id", pa.string(), nullable=False),
])

ITEM_MAP = pa.schema([
    pa.field("item_idx", pa.int32(), nullable=False),
    pa.field("item_id", pa.string(), nullable=False),
])

COLD_ITEMS = pa.schema([  # the cold-item protocol's held-out items (``split.cold_items``); absent when it is off
    pa.field("item_idx", pa.int32(), nullable=False),
    pa.field("item_id", pa.string(), nullable=False),
    pa.field("half", pa.string(), nullable=False),     # valid | test
])

NEGATIVES = pa.schema([
    pa.field("user_idx", pa.int32(), nullable=False),
    pa.field("items", pa.list_(pa.int32()), nullable=False),
])

# Factor tables ------------------------------------------------------------------------------
USER_FACTORS = pa.schema([
    pa.field("user_id", pa.string(), nullable=False),
    pa.field("user_idx", pa.int32(), nullable=False),
    pa.field("factors", pa.list_(pa.float32()), nullable=False),
])

ITEM_FACTORS = pa.schema([
    pa.field("item_id", pa.string(), nullable=False),
    pa.field("item_idx", pa.int32(), nullable=False),
    pa.field("factors", pa.list_(pa.float32()), nullable=False),
])

# LLM stages ---------------------------------------------------------------------------------
DESCRIPTIONS = pa.schema([
    pa.field("kind", pa.string(), nullable=False),            # item | user
    pa.field("id", pa.string(), nullable=False),              # the source's item_id / user_id
    pa.field("idx", pa.int32(), nullable=False),              # item_idx / user_idx of this ds
    pa.field("prompt_version", pa.string(), nullable=False),
    pa.field("model", pa.string(), nullable=False),           # backend, model and generation settings
    pa.field("input_hash", pa.string(), nullable=False),      # the cache key: prompt version + model + messages
    pa.field("text", pa.string(), nullable=False),
    pa.field("status", pa.string(), nullable=False),          # ok | degenerate (kept for inspection, not embedded)
    pa.field("reason", pa.string()),                          # why degenerate
    pa.field("tokens", pa.int32(), nullable=False),           # generated tokens
])

TEXT_EMBEDDINGS = pa.schema([
    pa.field("kind", pa.string(), nullable=False),            # item | user
    pa.field("source", pa.string(), nullable=False),          # descriptions | metadata (the text source asked for)
    pa.field("id", pa.string(), nullable=False),
    pa.field("idx", pa.int32(), nullable=False),
    pa.field("fallback", pa.bool_(), nullable=False),         # source=descriptions but the metadata text stood in
    pa.field("text_hash", pa.string(), nullable=False),
    pa.field("vector", pa.list_(pa.float32()), nullable=False),  # L2-normalised
])

NEIGHBOURS = pa.schema([
    pa.field("kind", pa.string(), nullable=False),            # item (items among items) | user (users among users)
    pa.field("source", pa.string(), nullable=False),
    pa.field("idx", pa.int32(), nullable=False),
    pa.field("id", pa.string(), nullable=False),
    pa.field("rank", pa.int16(), nullable=False),             # 0 = most similar; self excluded
    pa.field("neighbour_idx", pa.int32(), nullable=False),
    pa.field("neighbour_id", pa.string(), nullable=False),
    pa.field("score", pa.float32(), nullable=False),          # cosine similarity
])

REASONS = pa.schema([
    pa.field("user_id", pa.string(), nullable=False),
    pa.field("user_idx", pa.int32(), nullable=False),
    pa.field("item_id", pa.string(), nullable=False),         # the user's top recommended item
    pa.field("item_idx", pa.int32(), nullable=False),
    pa.field("reason", pa.string(), nullable=False),
    pa.field("status", pa.string(), nullable=False),          # ok | degenerate (after one sampled retry)
    pa.field("grounded", pa.float32(), nullable=False),       # share of the reason's content words found in its facts
    pa.field("unsupported", pa.list_(pa.string())),           # brands/product types named that the facts lack
    pa.field("prompt_version", pa.string(), nullable=False),
    pa.field("model", pa.string(), nullable=False),           # the trained weights' key (tagged on the MLflow version)
])

QUERIES = pa.schema([
    pa.field("user_id", pa.string(), nullable=False),
    pa.field("user_idx", pa.int32(), nullable=False),
    pa.field("phase", pa.string(), nullable=False),           # train | valid | test: whose history (never the target)
    pa.field("history_len", pa.int32(), nullable=False),
    pa.field("rationale", pa.string(), nullable=False),       # the LLM's reasoning about the next need
    pa.field("pieces", pa.list_(pa.string())),                # the rationale's generated tokens, decoded one by one
    pa.field("attention", pa.list_(pa.float32())),            # s_attn per generated token
    pa.field("entropy", pa.list_(pa.float32())),              # s_ent per generated token (nats)
    pa.field("query", pa.string(), nullable=False),           # top web.keywords words by s_attn * s_ent
    pa.field("naive_query", pa.string(), nullable=False),     # baseline: the task sentence + the newest title
    pa.field("last_title", pa.string(), nullable=False),      # baseline: the newest item's title alone
    pa.field("prompt_version", pa.string(), nullable=False),
    pa.field("model", pa.string(), nullable=False),
])

RETRIEVED = pa.schema([
    pa.field("user_id", pa.string(), nullable=False),
    pa.field("user_idx", pa.int32(), nullable=False),
    pa.field("phase", pa.string(), nullable=False),
    pa.field("rank", pa.int16(), nullable=False),             # 0 = best
    pa.field("doc_id", pa.string(), nullable=False),
    pa.field("url", pa.string(), nullable=False),
    pa.field("title", pa.string(), nullable=False),
    pa.field("text", pa.string(), nullable=False),            # sanitised: no markup, no instruction-like lines, capped
    pa.field("score", pa.float32(), nullable=False),          # the backend's relevance score
    pa.field("removed_lines", pa.int16(), nullable=False),    # instruction-like lines the sanitiser dropped
    pa.field("backend", pa.string(), nullable=False),
])

TABLES: dict[str, pa.Schema] = {
    "interactions": INTERACTIONS,
    "items": ITEMS,
    "users": USERS,
    "sequences": SEQUENCES,
    "user_map": USER_MAP,
    "item_map": ITEM_MAP,
    "cold_items": COLD_ITEMS,
    "negatives": NEGATIVES,
    "user_factors": USER_FACTORS,
    "item_factors": ITEM_FACTORS,
    "descriptions": DESCRIPTIONS,
    "text_embeddings": TEXT_EMBEDDINGS,
    "neighbours": NEIGHBOURS,
    "reasons": REASONS,
    "queries": QUERIES,
    "retrieved": RETRIEVED,
}


def check_schema(table: str, actual: pa.Schema) -> None:
    """Raise ``DataError`` naming the column when ``actual`` lacks or mistypes a declared column."""
    expected = TABLES[table]
    for f in expected:
        if f.name not in actual.names:
            raise DataError(f"table '{table}'", f"column '{f.name}' is missing (have {actual.names}).",
                            "the producing stage must emit every declared column.")
        got = actual.field(f.name).type
        if not got.equals(f.type):
            raise DataError(f"table '{table}'", f"column '{f.name}' has type {got}, expected {f.type}.",
                            "cast the column in the producing transform.")
    extra = sorted(set(actual.names) - set(expected.names))
    if extra:
        raise DataError(f"table '{table}'", f"undeclared columns {extra}.",
                        "declare them in features/schemas.py or drop them.")
