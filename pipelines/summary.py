"""``runs/<ds>/summary.json``, rebuilt from the per-stage records, and "is this day done".

Each stage's record lands in ``runs/<ds>/stages/<name>.json``; the summary is rebuilt from those files, so tasks
running in separate processes (Airflow) never overwrite each other's results.
"""
from __future__ import annotations

import json
from pathlib import Path

from jobs.warehouse import write_json
from pipelines.graph import ORDER

TABLE_KEYS = ("interactions", "items", "users", "train", "valid", "test", "user_map", "item_map",
              "user_factors", "item_factors", "descriptions", "text_embeddings", "neighbours")
METRIC_KEYS = ("full", "sampled100", "cand20", "slices", "cold", "warm", "valid", "eval_seconds", "notes")
HIDDEN_KEYS = ("outputs", "traceback", "tables")  # in the stage records, not in the summary


def read_json(path: Path) -> dict:
    """The JSON object at ``path``; ``{}`` when it is missing or not (yet) valid JSON."""
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def stage_record_path(run_dir: Path, stage: str) -> Path:
    return run_dir / "stages" / f"{stage}.json"


def write_summary(run_dir: Path, ds: str, dataset: str) -> dict:
    """Rebuild ``<run_dir>/summary.json`` in the documented shape from the stage records; return it.

    ``status``: ``failed`` if any stage failed, ``success`` if every stage of the table succeeded, else ``partial``.
    """
    recs = {p.stem: read_json(p) for p in sorted((run_dir / "stages").glob("*.json"))}
    stages, tables = {}, {}
    for name in [n for n in ORDER if n in recs]:
        r = recs[name]
        stages[name] = {k: v for k, v in r.items() if k not in HIDDEN_KEYS}
        stages[name].setdefault("rows_out", None)
        tables.update({k: v for k, v in r.get("tables", {}).items() if k in TABLE_KEYS})
    failed = [n for n in ORDER if recs.get(n, {}).get("status") == "failed"]
    done_all = all(recs.get(n, {}).get("status") == "success" for n in ORDER)
    status = "failed" if failed else "success" if done_all else "partial"
    metrics = read_json(run_dir / "metrics.json")
    mlflow = read_json(run_dir / "mlflow.json")
    summary = {
        "ds": ds, "dataset": dataset, "status": status, "stages": stages, "tables": tables,
        "metrics": {m: {k: v for k, v in d.items() if k in METRIC_KEYS} for m, d in metrics.items()},
        "mlflow": {"run_id": mlflow.get("run_id"), "tracking_uri": mlflow.get("tracking_uri"),
                   "models": mlflow.get("models", [])},
    }
    if failed:
        summary["failed_stage"] = failed[0]
        summary["error"] = recs[failed[0]].get("error")
    write_json(run_dir / "summary.json", summary)
    return summary


def is_done(home: Path, ds: str) -> bool:
    """True when ``runs/<ds>/summary.json`` says the whole day succeeded."""
    return read_json(home / "runs" / ds / "summary.json").get("status") == "success"


def successful_days(home: Path) -> list[str]:
    """Every ``ds`` under ``<home>/runs`` whose summary says ``success``, oldest first."""
    return sorted(p.parent.name for p in (home / "runs").glob("*/summary.json") if is_done(home, p.parent.name))
