"""The ``register`` stage: one MLflow run for the day (params, metrics, report, factors) and every evaluated model
registered as a pyfunc version under alias ``challenger``."""
from __future__ import annotations

import json
from pathlib import Path

from jobs import warehouse
from pipelines import registry
from pipelines.config import dump_yaml
from pipelines.context import StageContext, StageResult
from pipelines.summary import write_summary


def run(ctx: StageContext) -> StageResult:
    metrics = json.loads((ctx.run_dir / "metrics.json").read_text())
    model_dirs = {k: Path(v) for k, v in json.loads((ctx.run_dir / "models.json").read_text()).items()}
    (ctx.run_dir / "config.yaml").write_text(dump_yaml(ctx.cfg))
    write_summary(ctx.run_dir, ctx.ds, ctx.cfg.dataset)  # so the logged summary.json holds every stage so far
    info = registry.log_run(ctx.cfg, ctx.ds, ctx.home, ctx.run_dir, metrics, model_dirs)
    warehouse.write_json(ctx.run_dir / "mlflow.json", info)
    print(f"  mlflow run {info['run_id']} at {info['tracking_uri']}; registered "
          + ", ".join(f"{m['name']} v{m['version']} {m['aliases']}" for m in info["models"]))
    return StageResult(len(info["models"]), {"mlflow": str(ctx.run_dir / "mlflow.json")},
                       details={"run_id": info["run_id"]})
