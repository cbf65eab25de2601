"""The pipeline's stages: ``run(ctx) -> dict`` each, one Airflow task each.

A stage reads and writes only under ``ctx.home`` and returns a small dict: ``rows_out``, its counts and the
paths it wrote (``outputs``). Only paths travel between stages, never data.
"""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa

from jobs import common
from pipelines.config import Config, dump_yaml


@dataclass(frozen=True)
class StageContext:
    cfg: Config
    ds: str
    home: Path

    @property
    def run_dir(self) -> Path:
        return self.home / "runs" / self.ds

    def spark_args(self) -> tuple[str, dict]:
        conf = {"spark.sql.shuffle.partitions": str(self.cfg.spark.shuffle_partitions),
                "spark.driver.memory": self.cfg.spark.driver_memory, **self.cfg.spark.conf}
        return self.cfg.spark.master, conf


def ingest(ctx: StageContext) -> dict:
    from jobs import ingest as job

    params = {**dataclasses.asdict(ctx.cfg.data), "synthetic": dataclasses.asdict(ctx.cfg.synthetic)}
    counts = job.run(str(ctx.home), ctx.ds, params, *ctx.spark_args())
    return {"rows_out": counts["interactions"], "tables": counts,
            "outputs": {t: str(common.partition_path(ctx.home, t, ctx.ds, "staging")) for t in counts}}


def validate(ctx: StageContext) -> dict:
    from pipelines import validate as gx_validate

    out = gx_validate.run(ctx.cfg, ctx.ds, ctx.home)
    return {**out, "outputs": {t: str(common.partition_path(ctx.home, t, ctx.ds))
                               for t in ("interactions", "items", "users")}}


def split(ctx: StageContext) -> dict:
    from jobs import split as job

    counts = job.run(str(ctx.home), ctx.ds, dataclasses.asdict(ctx.cfg.split), *ctx.spark_args())
    return {"rows_out": counts["sequences"], "tables": counts,
            "outputs": {t: str(common.partition_path(ctx.home, t, ctx.ds)) for t in ("sequences", "user_map", "item_map")}}


def wals(ctx: StageContext) -> dict:
    from pipelines import wals as wals_stage

    return wals_stage.run(ctx)


def describe(ctx: StageContext) -> dict:
    from pipelines import describe as describe_stage

    return describe_stage.run(ctx)


def embed(ctx: StageContext) -> dict:
    from pipelines import embed as embed_stage

    return embed_stage.run(ctx)


def neighbours(ctx: StageContext) -> dict:
    from pipelines import neighbours as neighbours_stage

    return neighbours_stage.run(ctx)


def train_grasp(ctx: StageContext) -> dict:
    from pipelines import train_grasp as train_stage

    return train_stage.run(ctx)


# ----------------------------------------------------------------------------- evaluate

def load_eval_data(ctx: StageContext):
    """EvalData and the id lists (``user_ids[idx]``, ``item_ids[idx]`` with ``item_ids[0] = ''``)."""
    from pipelines.evaluation import from_sequences

    umap = common.read_arrow(ctx.home, "user_map", ctx.ds).sort_by("user_idx")
    imap = common.read_arrow(ctx.home, "item_map", ctx.ds).sort_by("item_idx")
    data = from_sequences(common.read_arrow(ctx.home, "sequences", ctx.ds), umap.num_rows, imap.num_rows)
    return data, umap.column("user_id").to_pylist(), [""] + imap.column("item_id").to_pylist()


def negatives_for(ctx: StageContext, data) -> np.ndarray:
    """The stored sampled negatives of ``ds``; drawn once (seeded) and written on first use."""
    from pipelines.evaluation import draw_negatives

    path = common.partition_path(ctx.home, "negatives", ctx.ds)
    n, seed = ctx.cfg.eval.n_negatives, ctx.cfg.eval.negatives_seed
    if path.exists():
        t = common.read_arrow(ctx.home, "negatives", ctx.ds).sort_by("user_idx")
        neg = np.asarray(t.column("items").combine_chunks().values, np.int32).reshape(t.num_rows, -1)
        if neg.shape == (data.n_users, n) and (path / "_seed").exists() and (path / "_seed").read_text() == str(seed):
            return neg
    neg = draw_negatives(data, n, seed)
    tbl = pa.table({"user_idx": pa.array(np.arange(data.n_users), pa.int32()),
                    "items": pa.FixedSizeListArray.from_arrays(pa.array(neg.ravel(), pa.int32()), n).cast(pa.list_(pa.int32()))})
    common.write_arrow(tbl, ctx.home, "negatives", ctx.ds)
    (path / "_seed").write_text(str(seed))
    return neg


def model_zoo(ctx: StageContext, data) -> dict[str, Callable]:
    """Models to evaluate this run: name -> factory(data) returning (scorer, serving arrays)."""
    from pipelines import train_grasp as train_stage, wals as wals_stage
    from pipelines.evaluation import Popularity

    def popularity(d):
        m = Popularity(d)
        return m, {"user_emb": np.zeros((d.n_users, 0)), "item_emb": np.zeros((d.n_items + 1, 0)),
                   "item_bias": m.counts["test"]}

    zoo = {"popularity": popularity}
    if common.partition_path(ctx.home, "user_factors", ctx.ds).exists():
        zoo["wals"] = lambda d: wals_stage.scorer(ctx, d)
    for name in train_stage.trained(ctx):
        zoo[name] = lambda d, name=name: train_stage.scorer(ctx, name, d)
    return zoo


def eval_kwargs(cfg: Config) -> dict:
    """The protocol settings of ``eval`` as keyword arguments of ``pipelines.evaluation.evaluate``."""
    e = cfg.eval
    return dict(ks=tuple(e.ks), batch=e.batch_size, short_quantile=e.short_quantile, tail_fraction=e.tail_fraction)


def evaluate(ctx: StageContext) -> dict:
    from pipelines import report, serving
    from pipelines.evaluation import evaluate as score

    data, user_ids, item_ids = load_eval_data(ctx)
    neg = negatives_for(ctx, data)
    kw = eval_kwargs(ctx.cfg)
    metrics, seconds, model_dirs = {}, {}, {}
    hist = data.history("test")
    for name, factory in model_zoo(ctx, data).items():
        model, arrays = factory(data)
        t0 = time.perf_counter()
        metrics[name] = score(model, data, neg, "test", **kw)
        seconds[name] = round(time.perf_counter() - t0, 3)
        metrics[name]["valid"] = {k: v for k, v in score(model, data, neg, "valid", **kw).items() if k != "slices"}
        metrics[name]["eval_seconds"] = seconds[name]
        model_dirs[name] = str(serving.save_scorer(ctx.run_dir / "models" / name, name, user_ids, item_ids,
                                                   top_k=ctx.cfg.mlflow.top_k, hist_indptr=hist.indptr,
                                                   hist_indices=hist.indices, **arrays))
        print(f"  evaluate {name}: test full NDCG@10={metrics[name]['full']['NDCG@10']:.4f} "
              f"HR@10={metrics[name]['full']['HR@10']:.4f} ({seconds[name]} s for {metrics[name]['full']['users']} users)")
    common.write_json(ctx.run_dir / "metrics.json", metrics)
    common.write_json(ctx.run_dir / "models.json", model_dirs)
    report.write(ctx, metrics, data)
    return {"rows_out": int((data.test > 0).sum()), "models": sorted(metrics), "eval_seconds": seconds,
            "outputs": {"metrics": str(ctx.run_dir / "metrics.json"), **model_dirs}}


def register(ctx: StageContext) -> dict:
    from pipelines import registry, runner

    metrics = json.loads((ctx.run_dir / "metrics.json").read_text())
    model_dirs = {k: Path(v) for k, v in json.loads((ctx.run_dir / "models.json").read_text()).items()}
    (ctx.run_dir / "config.yaml").write_text(dump_yaml(ctx.cfg))
    runner.write_summary(ctx)  # so the logged summary.json holds every stage so far
    info = registry.log_run(ctx.cfg, ctx.ds, ctx.home, ctx.run_dir, metrics, model_dirs)
    common.write_json(ctx.run_dir / "mlflow.json", info)
    print(f"  mlflow run {info['run_id']} at {info['tracking_uri']}; registered "
          + ", ".join(f"{m['name']} v{m['version']} {m['aliases']}" for m in info["models"]))
    return {"rows_out": len(info["models"]), "run_id": info["run_id"], "outputs": {"mlflow": str(ctx.run_dir / "mlflow.json")}}


STAGES: dict[str, Callable[[StageContext], dict]] = {
    "ingest": ingest, "validate": validate, "split": split, "wals": wals,
    "describe": describe, "embed": embed, "neighbours": neighbours,
    "train_grasp": train_grasp, "evaluate": evaluate, "register": register,
}
