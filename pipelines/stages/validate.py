"""The ``validate`` stage: Great Expectations 1.x suites for ``interactions`` and ``items``.

Ingest writes to ``staging/``; only data that passes is published (atomically) into ``warehouse/``, so a
failing day never replaces a partition that an earlier successful run wrote. A failing suite stops the run with a ``DataError`` naming the table, each failing expectation, how many
rows fail and a few sample values. The full result is saved as ``runs/<ds>/validation.json`` either way.
"""
from __future__ import annotations

import logging
import sys
from typing import Any

import pandas as pd

from features.errors import DataError
from jobs.warehouse import publish, read_arrow, write_json
from pipelines.config import Config
from pipelines.context import StageContext, StageResult


def _suites(cfg: Config, item_ids: list[str]) -> dict[str, list[Any]]:
    import great_expectations as gx

    E = gx.expectations
    v = cfg.validate
    return {
        "interactions": [
            E.ExpectTableRowCountToBeBetween(min_value=v.min_interactions, max_value=v.max_interactions),
            *[E.ExpectColumnValuesToNotBeNull(column=c) for c in ("user_id", "item_id", "timestamp")],
            E.ExpectCompoundColumnsToBeUnique(column_list=["user_id", "item_id", "timestamp"]),
            E.ExpectColumnValuesToBeBetween(column="timestamp", min_value=v.min_timestamp, max_value=v.max_timestamp),
            E.ExpectColumnValuesToBeInSet(column="item_id", value_set=item_ids),
        ],
        "items": [
            E.ExpectTableRowCountToBeBetween(min_value=v.min_items),
            E.ExpectColumnValuesToNotBeNull(column="item_id"),
            E.ExpectColumnValuesToBeUnique(column="item_id"),
        ],
    }


def _describe(table: str, r: Any) -> str:
    cfg = r.expectation_config
    name = "".join(w.capitalize() for w in cfg.type.split("_"))  # the class used in _suites, e.g. ExpectColumnValuesToBeInSet
    kwargs = {k: v for k, v in cfg.kwargs.items() if k not in ("batch_id", "value_set")}
    res = r.result or {}
    count = res.get("unexpected_count")
    sample = res.get("partial_unexpected_list") or res.get("partial_unexpected_index_list")
    if count is None and "observed_value" in res:
        return f"{table}: {name} {kwargs} failed (observed {res['observed_value']})"
    return f"{table}: {name} {kwargs} failed for {count} row(s), e.g. {list(sample or [])[:5]}"


def validate_frames(cfg: Config, frames: dict[str, pd.DataFrame]) -> tuple[list[str], dict]:
    """Run the suites on in-memory frames; return (failure messages, JSON-able result per table)."""
    import great_expectations as gx

    logging.getLogger("great_expectations").setLevel(logging.ERROR)
    from great_expectations.data_context.types.base import ProgressBarsConfig

    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    source = ctx.data_sources.add_pandas("recpipe")
    item_ids = frames["items"]["item_id"].dropna().astype(str).unique().tolist()
    failures, report = [], {}
    for table, expectations in _suites(cfg, item_ids).items():
        suite = ctx.suites.add(gx.ExpectationSuite(name=f"{table}_suite"))
        for e in expectations:
            suite.add_expectation(e)
        batch = (source.add_dataframe_asset(table).add_batch_definition_whole_dataframe(table)
                 .get_batch(batch_parameters={"dataframe": frames[table]}))
        result = batch.validate(suite)
        failing = [r for r in result.results if not r.success]
        failures += [_describe(table, r) for r in failing]
        report[table] = {"success": bool(result.success), "evaluated": len(result.results),
                         "failed": [_describe(table, r) for r in failing]}
    return failures, report


def run(ctx: StageContext) -> StageResult:
    ds, home = ctx.ds, ctx.home
    frames = {t: read_arrow(home, t, ds, zone="staging").to_pandas() for t in ("interactions", "items")}
    frames["items"] = frames["items"][["item_id", "title"]]  # list columns are not needed by the suites
    failures, report = validate_frames(ctx.cfg, frames)
    report["warnings"] = warnings(frames["items"])
    for w in report["warnings"]:
        print(f"  warning: {w}", file=sys.stderr, flush=True)
    write_json(ctx.run_dir / "validation.json", report)
    if failures:
        raise DataError(f"validation of ds={ds} (warehouse/interactions, warehouse/items)",
                        f"{len(failures)} expectation(s) failed: " + "; ".join(failures) + ".",
                        "fix the raw files (or the source adapter) and re-run; the full result is in "
                        f"{ctx.run_dir / 'validation.json'}.")
    published = {table: str(publish(home, table, ds)) for table in ("interactions", "items", "users")}
    return StageResult(int(sum(len(f) for f in frames.values())), published,
                       details={"expectations": sum(r["evaluated"] for t, r in report.items() if t != "warnings"),
                                "warnings": report["warnings"]})


def warnings(items: pd.DataFrame) -> list[str]:
    """What passes validation but a user should know: items without a title (prompts, reasons and the metadata
    text then show them by their other facts only)."""
    title = items["title"]
    untitled = items["item_id"][title.isna() | (title.astype(str).str.strip() == "")].astype(str).tolist()
    if not untitled:
        return []
    return [f"{len(untitled)} item(s) have no title, e.g. {untitled[:5]}: the LLM prompts and the metadata text "
            "show them by their other facts only; fill the title column of the items file"]
