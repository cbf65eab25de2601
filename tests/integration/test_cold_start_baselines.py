"""The cold-item baselines end to end on the synthetic shop (``split.cold_items=0.1``): ingest .. register with
metadata text vectors, WALS and a one-epoch SASRec; every baseline lands in ``metrics.json`` with its ``cold`` and
``warm`` groups and the choices it made on the cold-valid users; WALS and SASRec are registered with the day-one
path chosen there, and the served SASRec ranks cold items. A smoke check of the wiring, not of quality."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import DS, SMALL_SHOP

pytestmark = pytest.mark.slow
SETS = [*SMALL_SHOP, "split.cold_items=0.1", "embed.sources=[metadata]", "train_sequential.models=[sasrec]",
        "train_sequential.train.epochs=1", "train_sequential.sasrec.hidden=32", "train_sequential.train.batch_size=128"]
BASELINES = ("content_knn", "content_knn_last", "sasrec_fill_in", "sasrec_regressor", "sasrec_text_gate",
             "wals_fill_in")


TOLERANCE = 0.01  # eval.day_one_warm_tolerance's default


def test_the_baselines_are_scored_on_the_cold_and_warm_groups(tmp_path):
    from pipelines import runner
    from pipelines.config import load_config
    from pipelines.evaluation import cold_start as cs

    stages = ["ingest", "validate", "split", "wals", "embed", "train_sequential", "evaluate", "register"]
    summary = runner.run(load_config(None, SETS), DS, tmp_path, stages)
    assert all(summary["stages"][s]["status"] == "success" for s in stages)
    metrics = json.loads((tmp_path / "runs" / DS / "metrics.json").read_text())
    assert list(metrics) == ["popularity", "wals", "sasrec", *BASELINES, "wals_as_trained", "sasrec_as_trained"]
    assert "skipped" not in json.loads((tmp_path / "runs" / DS / "stages" / "evaluate.json").read_text())
    for name in metrics:
        m = metrics[name]
        assert m["cold"]["full"]["users"] > 0 and m["warm"]["full"]["users"] > 0
        assert m["valid"]["cold"]["full"]["users"] > 0 and 0.0 <= m["warm"]["cold_share_top10"]["share"] <= 1.0
        print(f"{name:18s} cold NDCG@10 {m['cold']['full']['NDCG@10']:.4f} HR@10 {m['cold']['full']['HR@10']:.4f}  "
              f"warm NDCG@10 {m['warm']['full']['NDCG@10']:.4f} HR@10 {m['warm']['full']['HR@10']:.4f}  "
              f"cold share top10 {m['warm']['cold_share_top10']['share']:.3f}  notes {m.get('notes', {})}")
    assert metrics["content_knn"]["notes"]["decay"] in cs.DECAY_GRID
    assert metrics["content_knn"]["notes"]["cold_valid_users"] == metrics["sasrec"]["valid"]["cold"]["full"]["users"]
    n = metrics["sasrec_regressor"]["notes"]
    assert n["norm_scale"] in cs.SCALE_GRID and n["ridge_lambda"] in cs.RIDGE_GRID and n["donors"] > 0
    n = metrics["sasrec_text_gate"]["notes"]
    assert n["threshold"] in (None, *cs.GATE_THRESHOLDS) and n["valid_NDCG@10_by_threshold"]
    assert metrics["wals_fill_in"]["notes"]["k"] == cs.FILL_K == metrics["sasrec_fill_in"]["notes"]["k"]
    for name, paths in (("wals", {"own", "fill_in"}), ("sasrec", {"own", "fill_in", "regressor"})):
        n = metrics[name]["notes"]
        cold, warm = n["cold_valid_NDCG@10_by_path"], n["warm_valid_NDCG@10_by_path"]
        ok = [p for p in cold if warm[p] >= (1 - TOLERANCE) * warm["own"]]   # what may cost warm users
        assert set(cold) == set(warm) == paths and n["day_one"] == max(ok, key=cold.get)
    _registered_and_served_with_their_day_one_path(tmp_path, metrics)


def _registered_and_served_with_their_day_one_path(home, metrics):
    import numpy as np
    import pandas as pd
    from mlflow import MlflowClient

    from jobs import warehouse
    from pipelines.registry import forward_dir
    from pipelines.serving import TopKModel

    uri = json.loads((home / "runs" / DS / "mlflow.json").read_text())["tracking_uri"]
    c = MlflowClient(tracking_uri=uri, registry_uri=uri)
    for name in ("wals", "sasrec"):
        v = c.get_model_version_by_alias(name, "challenger")
        assert v.tags["recpipe.day_one"] == metrics[name]["notes"]["day_one"]
    served = json.loads((home / "runs" / DS / "models.json").read_text())
    assert "sasrec_as_trained" not in served                            # evaluated beside, not served
    cold = set(warehouse.read_arrow(home, "cold_items", DS).column("item_id").to_pylist())
    m = TopKModel().load(Path(served["sasrec"]), forward=forward_dir(home / "runs" / DS, "sasrec"))
    users = json.loads((Path(served["sasrec"]) / "meta.json").read_text())["user_ids"][:200]
    out = m.predict(None, pd.DataFrame({"user_id": users}), {"k": 20})
    assert cold & set(np.concatenate(out["item_ids"].to_numpy()))          # new items reach the served lists
