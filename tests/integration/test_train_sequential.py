"""The train_sequential stage on the synthetic shop: real DeepSpeed (gloo on CPU), one and two processes, resume,
evaluation with the shared protocol and pyfunc serving from the MLflow registry in a fresh process."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import DS, private_home, split_home_with, stage_cli

pytestmark = pytest.mark.slow
FAST = ["train_sequential.text_source=metadata", "train_sequential.sasrec.hidden=32",
        "train_sequential.train.batch_size=128"]
STAGE = "train_sequential"


@pytest.fixture(scope="module")
def _text_home(_synthetic_split, tmp_path_factory) -> Path:
    """A synthetic home after split with metadata text embeddings and neighbours (no LLM needed)."""
    return split_home_with(_synthetic_split, tmp_path_factory.mktemp("grasp_base"), ["embed", "neighbours"],
                           ["embed.sources=[metadata]"])


@pytest.fixture
def text_home(_text_home, tmp_path) -> Path:
    return private_home(_text_home, tmp_path)


def _stage(home: Path, *sets: str, procs: int = 1) -> subprocess.CompletedProcess:
    return stage_cli(home, STAGE, [*FAST, *sets], procs, timeout=300)


def _vectors(home: Path, model: str) -> dict[str, np.ndarray]:
    return dict(np.load(home / "runs" / DS / STAGE / model / "vectors.npz"))


def _result(home: Path, model: str) -> dict:
    return json.loads((home / "runs" / DS / STAGE / model / "result.json").read_text())


def test_one_epoch_trains_evaluates_registers_and_serves(text_home):
    from pipelines import runner
    from pipelines.config import load_config

    # SASRec's own batch (per_model) reaches SASRec only
    cfg = load_config(None, [*FAST, "train_sequential.train.epochs=1", "train_sequential.per_model.sasrec.train.batch_size=64"])
    summary = runner.run(cfg, DS, text_home, [STAGE, "evaluate", "register"])
    st = summary["stages"][STAGE]
    assert st["status"] == "success" and st["world_size"] == 1
    assert (_result(text_home, "sasrec")["batch_size"], _result(text_home, "grasp")["batch_size"]) == \
        (64, cfg.train_sequential.train.batch_size) and cfg.train_sequential.train.batch_size != 64
    for model in ("sasrec", "grasp"):
        r = _result(text_home, model)
        assert r["epochs_run"] == 1 and r["best_epoch"] == 1 and r["epoch_seconds"] > 0
        assert len(r["history"]) == 1 and np.isfinite(r["history"][0]["loss"])
        m = summary["metrics"][model]
        assert set(m["slices"]) == {"short_history", "tail_items"} and "NDCG@10" in m["sampled100"]
        # even one epoch learns something: far above the 1 / 100 random-ranking level on sampled negatives
        assert m["sampled100"]["HR@10"] > 0.2
    assert _result(text_home, "grasp")["text_source"] == "metadata"
    assert {m["name"] for m in summary["mlflow"]["models"]} >= {"sasrec", "grasp"}

    from pipelines.context import StageContext
    from pipelines.evaluation.data import load_eval_data
    ctx = StageContext(cfg, DS, text_home)
    data, user_ids, item_ids = load_eval_data(ctx)
    v = _vectors(text_home, "grasp")
    u = 3
    scores = v["user_test"][u] @ v["items"].T
    scores[0] = -np.inf
    hist = data.history("test")
    scores[hist.indices[hist.indptr[u]:hist.indptr[u + 1]]] = -np.inf
    expected = [item_ids[i] for i in np.argsort(-scores, kind="stable")[:5]]
    code = (
        "import mlflow, pandas as pd, json\n"
        f"mlflow.set_tracking_uri('sqlite:///{text_home}/mlflow/mlflow.db')\n"
        "out = {}\n"
        "for name in ('sasrec', 'grasp'):\n"
        "    m = mlflow.pyfunc.load_model(f'models:/{name}@challenger')\n"
        f"    p = m.predict(pd.DataFrame({{'user_id': ['{user_ids[u]}', 'nobody']}}), params={{'k': 5}})\n"
        "    out[name] = {'items': [list(x) for x in p['item_ids']], 'known': p['known'].tolist()}\n"
        "print(json.dumps(out))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    served = json.loads(proc.stdout.strip().splitlines()[-1])
    assert served["grasp"]["items"][0] == expected          # the served list is the trained model's ranking
    assert served["grasp"]["known"] == [True, False] and len(served["sasrec"]["items"][1]) == 5


def test_two_processes_match_one_process(text_home, tmp_path, monkeypatch):
    """One process, and two started by the Airflow task's launcher (``distributed.launcher``: torchrun here,
    ``deepspeed --hostfile ...`` on GPU nodes), train the same models."""
    from pipelines import runner
    from pipelines.training.distributed import free_port

    other = tmp_path / "two"
    shutil.copytree(text_home / "warehouse", other / "warehouse")
    sets = ["train_sequential.train.epochs=1", "train_sequential.sasrec.dropout=0.0"]
    _stage(text_home, *sets)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    launcher = (f"torchrun --nproc_per_node 2 --master_addr 127.0.0.1 --master_port {free_port()}")
    out = runner.run_task(STAGE, DS, None, [*FAST, *sets, f"train_sequential.distributed.launcher={launcher}"],
                          str(other))
    assert out["outputs"] and (other / "runs" / DS / "stages" / f"{STAGE}.json").exists()
    for model in ("sasrec", "grasp"):
        one, two = _vectors(text_home, model), _vectors(other, model)
        assert _result(other, model)["world_size"] == 2
        for key in ("items", "user_test"):
            assert np.allclose(one[key], two[key], atol=1e-4), (model, key, np.abs(one[key] - two[key]).max())
        h1, h2 = _result(text_home, model)["history"][0], _result(other, model)["history"][0]
        assert h1["loss"] == pytest.approx(h2["loss"], abs=1e-4)
        assert h1["valid_NDCG@10"] == pytest.approx(h2["valid_NDCG@10"], abs=2e-3)


def test_resumed_run_repeats_the_uninterrupted_one(text_home, tmp_path):
    """Two epochs, then a third from the checkpoint, equals three epochs in one go (dropout on: RNG is re-seeded)."""
    straight = tmp_path / "straight"
    shutil.copytree(text_home / "warehouse", straight / "warehouse")
    sets = ["train_sequential.models=[grasp]", "train_sequential.train.patience=100"]
    _stage(text_home, *sets, "train_sequential.train.epochs=2")
    proc = _stage(text_home, *sets, "train_sequential.train.epochs=3")
    assert "resuming after epoch 2" in proc.stdout
    _stage(straight, *sets, "train_sequential.train.epochs=3")
    resumed, fresh = _result(text_home, "grasp"), _result(straight, "grasp")
    assert resumed["resumed_from_epoch"] == 2 and resumed["epochs_run"] == fresh["epochs_run"] == 3
    assert [h["loss"] for h in resumed["history"]] == pytest.approx([h["loss"] for h in fresh["history"]], abs=1e-5)
    assert np.allclose(_vectors(text_home, "grasp")["user_test"], _vectors(straight, "grasp")["user_test"], atol=1e-5)
    # a finished run is reused, not retrained
    again = _stage(text_home, *sets, "train_sequential.train.epochs=3")
    assert "resuming after epoch 3" in again.stdout and " epoch 4" not in again.stdout


def test_missing_text_tables_name_the_stage_to_run(_synthetic_split, tmp_path):
    from pipelines import runner
    from pipelines.config import load_config

    home = tmp_path / "bare"
    shutil.copytree(_synthetic_split / "warehouse", home / "warehouse")
    with pytest.raises(runner.StageFailed, match="run the 'embed' stage first"):
        runner.run(load_config(None, FAST), DS, home, [STAGE])
