"""The train_llmrec stage on the synthetic shop with a tiny random Llama (no download): both stages through real
DeepSpeed, evaluation with the shared protocol (and the cascade), registration, resume, and two processes giving
the one-process result."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import DS, private_home, split_home_with, stage_cli

pytestmark = pytest.mark.slow
STAGE = "train_llmrec"


def fast(tiny_llm_dir) -> list[str]:
    return [f"llmrec.model_path={tiny_llm_dir}", "llmrec.train_users=120", "llmrec.examples_per_user=2",
            "llmrec.valid_users=100", "llmrec.max_history=4", "llmrec.title_tokens=4", "llmrec.reasons_users=4",
            "llmrec.reason_max_new_tokens=8", "llmrec.lora_dropout=0.0", "llmrec.stage1.epochs=2",
            "llmrec.stage2.epochs=1", "llmrec.stage1.lr=0.01", "llmrec.stage2.lr=0.005", "eval.users=300",
            "llmrec.rerank_from=wals", "llmrec.rerank_k=20", "embed.sources=[metadata]", "llmrec.retrieval=none"]


@pytest.fixture(scope="module")
def _base(_synthetic_split, tmp_path_factory) -> Path:
    """A synthetic home after split with WALS factors and metadata text embeddings."""
    return split_home_with(_synthetic_split, tmp_path_factory.mktemp("llmrec_base"), ["wals", "embed"],
                           ["embed.sources=[metadata]"])


@pytest.fixture
def home(_base, tmp_path) -> Path:
    return private_home(_base, tmp_path)  # its scratch zone (WALS's train-only fit) too


def _stage(home: Path, sets: list[str], procs: int = 1) -> subprocess.CompletedProcess:
    return stage_cli(home, STAGE, sets, procs)


def _out(home: Path) -> Path:
    return home / "runs" / DS / STAGE / "llmrec"


def test_trains_both_stages_evaluates_with_the_cascade_and_registers(home, tiny_llm_dir):
    from jobs import warehouse
    from pipelines import runner
    from pipelines.config import load_config

    cfg = load_config(None, fast(tiny_llm_dir))
    summary = runner.run(cfg, DS, home, [STAGE, "evaluate", "register"])
    st = summary["stages"][STAGE]
    assert st["status"] == "success" and set(st["stages"]) == {"stage1", "stage2"}
    assert st["train_examples"] == 240 and st["valid_users"] == 100 and st["scored_users"] == 300
    assert st["stages"]["stage1"]["epochs_run"] == 2 and st["stages"]["stage2"]["epochs_run"] == 1
    assert st["stages"]["stage2"]["examples_per_s"] > 0
    z = np.load(_out(home) / "vectors.npz")
    n_users, n_items = (warehouse.read_arrow(home, t, DS).num_rows for t in ("user_map", "item_map"))
    assert z["user_test"].shape == (n_users, 128) and z["items"].shape[0] == n_items + 1
    assert int(z["scored"].sum()) == 300
    m = summary["metrics"]
    assert {"llmrec", "llmrec_cascade_wals"} <= set(m)
    for name in ("popularity", "wals", "llmrec", "llmrec_cascade_wals"):
        assert m[name]["full"]["users"] == 300                                 # every model on the same users
    # the cascade only reorders WALS's top 20: its HR@20 is WALS's (the same 20 candidates), its ranks below too
    assert m["llmrec_cascade_wals"]["full"]["HR@20"] == pytest.approx(m["wals"]["full"]["HR@20"])
    assert {x["name"] for x in summary["mlflow"]["models"]} == {"popularity", "wals", "llmrec"}  # cascade not served
    r = warehouse.read_arrow(home, "reasons", DS)
    assert r.num_rows == 4 and set(r.column("status").to_pylist()) <= {"ok", "degenerate"}
    assert set(r.column("model").to_pylist()) == {st["model_key"]}
    from mlflow import MlflowClient

    uri = f"sqlite:///{home / 'mlflow' / 'mlflow.db'}"
    version = MlflowClient(uri, uri).get_model_version_by_alias("llmrec", "challenger")
    assert version.tags["recpipe.model_key"] == st["model_key"]


def test_a_rerun_resumes_both_stages_and_scores_the_same(home, tiny_llm_dir):
    _stage(home, fast(tiny_llm_dir))
    first = np.load(_out(home) / "vectors.npz")["user_test"]
    again = _stage(home, fast(tiny_llm_dir))
    assert "llmrec stage 1: resuming after epoch 2" in again.stdout
    assert "llmrec stage 2: resuming after epoch 1" in again.stdout
    assert np.allclose(np.load(_out(home) / "vectors.npz")["user_test"], first, atol=1e-6)


def test_two_processes_match_one_process(home, tiny_llm_dir, tmp_path):
    other = tmp_path / "two"
    shutil.copytree(home, other)
    # without alignment: its in-batch negatives are each rank's share of the batch, not the whole batch
    sets = [*fast(tiny_llm_dir), "llmrec.reasons_users=0", "llmrec.stage1.epochs=1", "llmrec.align_weight=0"]
    _stage(home, sets)
    proc = _stage(other, sets, procs=2)
    assert "2 process(es)" in proc.stdout
    one, two = np.load(_out(home) / "vectors.npz"), np.load(_out(other) / "vectors.npz")
    # the items agree to 1e-4; the user vectors pass through the LLM, whose sums round differently when each rank
    # holds half the batch: they agree to 2e-3 (values of order 1)
    for key, tol in (("items", 1e-4), ("user_test", 2e-3)):
        assert np.allclose(one[key], two[key], atol=tol), (key, np.abs(one[key] - two[key]).max())
    r1 = json.loads((_out(home) / "result.json").read_text())["history"]
    r2 = json.loads((_out(other) / "result.json").read_text())["history"]
    for s in ("stage1", "stage2"):
        assert r1[s][0]["loss"] == pytest.approx(r2[s][0]["loss"], abs=1e-4)
