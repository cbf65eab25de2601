"""Run stages in order for one ``ds`` (the local runner), keep ``runs/<ds>/summary.json`` current.

Airflow calls ``run_task`` once per task; ``recpipe run`` calls ``run`` which calls the same ``run_stage``.
Each stage's record lands in ``runs/<ds>/stages/<name>.json`` and the summary is rebuilt from those files,
so tasks running in separate processes never overwrite each other's results.
"""
from __future__ import annotations

import json
import os
import time
import traceback
from pathlib import Path

from jobs.common import write_json
from pipelines.config import Config, dump_yaml, load_config
from pipelines.stages import STAGES, StageContext

ORDER = list(STAGES)
TABLE_KEYS = ("interactions", "items", "users", "train", "valid", "test", "user_map", "item_map",
              "user_factors", "item_factors", "descriptions", "text_embeddings", "neighbours")


class StageFailed(RuntimeError):
    def __init__(self, stage: str, ds: str, cause: BaseException) -> None:
        self.stage, self.ds, self.cause = stage, ds, cause
        super().__init__(f"stage '{stage}' failed for ds={ds}: {cause}")


def resolve_home(home: str | Path | None) -> Path:
    return Path(home or os.environ.get("RECPIPE_HOME") or ".recpipe").resolve()


def select_stages(until: str | None = None, stages: str | None = None) -> list[str]:
    if until and stages:
        raise ValueError("use either --until or --stages, not both")
    if stages:
        names = [s.strip() for s in stages.split(",") if s.strip()]
        unknown = [s for s in names if s not in STAGES]
        if unknown:
            raise ValueError(f"unknown stage(s) {unknown}; stages are {ORDER}")
        return [s for s in ORDER if s in names]
    if until:
        if until not in STAGES:
            raise ValueError(f"unknown stage '{until}'; stages are {ORDER}")
        return ORDER[: ORDER.index(until) + 1]
    return list(ORDER)


DISTRIBUTED = {"train_grasp"}  # stages that run on every rank of torchrun/deepspeed


def is_rank0() -> bool:
    """False in the non-zero ranks of torchrun/deepspeed: only rank 0 keeps records and prints summaries."""
    return int(os.environ.get("RANK", "0")) == 0


def run_stage(name: str, ctx: StageContext) -> dict:
    """Run one stage, record its timing/counts (or its error), refresh the summary."""
    if not is_rank0():
        return {"status": "success", **STAGES[name](ctx)}
    rec_path = ctx.run_dir / "stages" / f"{name}.json"
    print(f"[{ctx.ds}] {name} ...", flush=True)
    t0 = time.perf_counter()
    try:
        out = STAGES[name](ctx)
    except Exception as exc:
        write_json(rec_path, {"status": "failed", "seconds": round(time.perf_counter() - t0, 2),
                              "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()})
        write_summary(ctx)
        raise StageFailed(name, ctx.ds, exc) from exc
    rec = {"status": "success", "seconds": round(time.perf_counter() - t0, 2), **out}
    write_json(rec_path, rec)
    write_summary(ctx)
    print(f"[{ctx.ds}] {name} done in {rec['seconds']:.1f} s, rows_out={out.get('rows_out')}", flush=True)
    return rec


def run(cfg: Config, ds: str, home: Path, stages: list[str] | None = None) -> dict | None:
    """Run the stages of one day; the summary (None in a non-zero rank, which writes nothing)."""
    ctx = StageContext(cfg, ds, home)
    if not is_rank0():  # other ranks join the distributed stages only; rank 0 runs the rest and keeps the records
        for name in stages or list(ORDER):
            if name in DISTRIBUTED:
                run_stage(name, ctx)
        return None
    ctx.run_dir.mkdir(parents=True, exist_ok=True)
    (ctx.run_dir / "config.yaml").write_text(dump_yaml(cfg))
    selected = stages or list(ORDER)
    write_json(ctx.run_dir / "plan.json", {"stages": selected})
    for name in selected:
        run_stage(name, ctx)
    return write_summary(ctx)


def run_task(stage: str, ds: str, config: str | None = None, overrides: list[str] | None = None,
             home: str | None = None) -> dict:
    """Airflow's entry point: one stage, returns the paths it wrote (small, XCom-safe)."""
    cfg = load_config(config or None, list(overrides or []))
    ctx = StageContext(cfg, ds, resolve_home(home))
    ctx.run_dir.mkdir(parents=True, exist_ok=True)
    (ctx.run_dir / "config.yaml").write_text(dump_yaml(cfg))
    return {"stage": stage, "ds": ds, "outputs": run_stage(stage, ctx).get("outputs", {})}


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def write_summary(ctx: StageContext) -> dict:
    """Rebuild ``runs/<ds>/summary.json`` in the documented shape from the stage records."""
    recs = {p.stem: _read(p) for p in sorted((ctx.run_dir / "stages").glob("*.json"))}
    stages, tables = {}, {}
    for name in [n for n in ORDER if n in recs]:
        r = recs[name]
        stages[name] = {k: v for k, v in r.items() if k not in ("outputs", "traceback", "tables")}
        stages[name].setdefault("rows_out", None)
        tables.update({k: v for k, v in r.get("tables", {}).items() if k in TABLE_KEYS})
    failed = [n for n, r in recs.items() if r.get("status") == "failed"]
    done_all = all(recs.get(n, {}).get("status") == "success" for n in ORDER)
    status = "failed" if failed else "success" if done_all else "partial"
    metrics = _read(ctx.run_dir / "metrics.json")
    mlflow = _read(ctx.run_dir / "mlflow.json")
    summary = {
        "ds": ctx.ds, "dataset": ctx.cfg.dataset, "status": status, "stages": stages, "tables": tables,
        "metrics": {m: {k: v for k, v in d.items() if k in ("full", "sampled100", "slices", "valid", "eval_seconds")}
                    for m, d in metrics.items()},
        "mlflow": {"run_id": mlflow.get("run_id"), "tracking_uri": mlflow.get("tracking_uri"),
                   "models": mlflow.get("models", [])},
    }
    if failed:
        summary["failed_stage"] = failed[0]
        summary["error"] = recs[failed[0]].get("error")
    write_json(ctx.run_dir / "summary.json", summary)
    return summary


def is_done(home: Path, ds: str) -> bool:
    return _read(home / "runs" / ds / "summary.json").get("status") == "success"
