"""WALS engines on the synthetic shop: implicit, Spark local, and Spark on separate executor JVMs.

The Spark job is run as its own process (``python jobs/wals.py``, as spark-submit would), once with
``local[2]`` and once with ``local-cluster[2,1,1024]`` (two executor JVMs), so nothing may rely on
driver-local state; the factors of both must score within tolerance of each other and of implicit.
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.backends import wals
from pipelines.config import load_config
from pipelines.context import StageContext
from pipelines.evaluation.data import load_eval_data, negatives_for
from pipelines.evaluation.protocol import evaluate
from pipelines.evaluation.scorers import FactorScorer
from tests.conftest import DS, private_home

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
PARAMS = {"factors": 16, "regularization": 0.05, "alpha": 10.0, "iterations": 10, "seed": 3}


@pytest.fixture(scope="module")
def ctx(_synthetic_split, tmp_path_factory):
    """A copy of the session's synthetic split (the WALS settings do not change the split)."""
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    home = private_home(_synthetic_split, tmp_path_factory.mktemp("wals_home"))
    return StageContext(load_config(None, [f"wals.{k}={v}" for k, v in PARAMS.items()]), DS, home)


def _spark_job(ctx, master: str, zone: str) -> dict:
    reg = wals.spark_regularization(ctx, PARAMS["regularization"], ("train",))
    params = {**PARAMS, "regularization": reg, "splits": ["train"], "zone": zone}
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYSPARK_PYTHON": sys.executable}
    proc = subprocess.run([sys.executable, str(ROOT / "jobs" / "wals.py"), "--home", str(ctx.home), "--ds", DS,
                           "--master", master, "--params", json.dumps(params),
                           "--spark-conf", json.dumps(ctx.spark_args()[1])],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _valid_ndcg(ctx, zone: str) -> float:
    data, _, _ = load_eval_data(ctx)
    neg = negatives_for(ctx, data)
    factors = wals.load_factors(ctx, zone, data.n_users, data.n_items)
    return evaluate(FactorScorer({"valid": factors}), data, neg, "valid")["full"]["NDCG@10"]


@pytest.fixture(scope="module")
def local(ctx) -> dict:
    return _spark_job(ctx, "local[2]", "spark_local")


def test_spark_on_separate_executors_matches_local(ctx, local):
    cluster = _spark_job(ctx, "local-cluster[2,1,1024]", "spark_cluster")
    assert local["user_factors"] == cluster["user_factors"] > 400
    assert local["item_factors"] == cluster["item_factors"] > 100
    nd_local, nd_cluster = _valid_ndcg(ctx, "spark_local"), _valid_ndcg(ctx, "spark_cluster")
    assert nd_local > 0.1  # far above popularity on the synthetic shop (~0.09)
    assert abs(nd_local - nd_cluster) / nd_local < 0.05


def test_implicit_and_spark_agree(ctx, local):
    p = dataclasses.replace(ctx.cfg.wals, engine="implicit", **PARAMS)
    wals.fit(ctx, p, ("train",), "implicit_zone")
    nd_spark, nd_implicit = _valid_ndcg(ctx, "spark_local"), _valid_ndcg(ctx, "implicit_zone")
    assert abs(nd_spark - nd_implicit) / nd_implicit < 0.10, (nd_spark, nd_implicit)
