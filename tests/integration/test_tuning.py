"""``recpipe tune sasrec`` on the synthetic shop: every grid point trained and judged on valid, the best one chosen,
evaluated once on test and registered, and a config file written that loads and runs with the chosen values."""
from __future__ import annotations

import json

import pytest

from pipelines.config import load_config
from pipelines.tuning import replace_path, tune_sequential
from tests.conftest import DS

pytestmark = pytest.mark.slow

SETS = ["train_sequential.models=[sasrec, grasp]", "train_sequential.sasrec.hidden=16",
        "train_sequential.train.epochs=2", "train_sequential.train.batch_size=256",
        "train_sequential.grid={sasrec.dropout: [0.0, 0.9], train.lr: [0.003]}"]


def test_tune_sasrec_chooses_on_valid_evaluates_once_and_writes_a_runnable_config(synthetic_home):
    cfg = load_config(None, SETS)
    out = tune_sequential("sasrec", cfg, DS, synthetic_home)
    run = synthetic_home / "runs" / DS
    record = json.loads((run / "tuning" / "sasrec.json").read_text())
    grid = record["grid"]
    assert [(g["sasrec.dropout"], g["train.lr"]) for g in grid] == [(0.0, 0.003), (0.9, 0.003)]
    best = max(grid, key=lambda g: g["valid_NDCG@10"])
    assert out["chosen"]["sasrec.dropout"] == best["sasrec.dropout"] == record["chosen"]["sasrec.dropout"]
    assert out["chosen"]["test"]["NDCG@10"] == json.loads((run / "metrics.json").read_text())["sasrec"]["full"]["NDCG@10"]
    # test was scored once, by the chosen model: the day's summary holds one evaluation, after the grid
    stages = json.loads((run / "summary.json").read_text())["stages"]
    assert {"train_sequential", "evaluate", "register"} <= set(stages)
    # the written config is the user's, with the chosen values: it loads and keeps their model list
    # the chosen values are SASRec's own (per_model.sasrec): GRASP keeps the section's settings
    tuned = load_config(out["config"])
    assert tuned.train_sequential.per_model["sasrec"] == {"sasrec": {"dropout": best["sasrec.dropout"]},
                                                          "train": {"lr": 0.003}}
    assert tuned.train_sequential.for_model("sasrec").sasrec.dropout == best["sasrec.dropout"]
    assert tuned.train_sequential.for_model("grasp").sasrec.dropout == cfg.train_sequential.sasrec.dropout
    assert tuned.train_sequential.train.lr == cfg.train_sequential.train.lr != 0.003
    assert tuned.train_sequential.models == ("sasrec", "grasp")
    assert tuned.train_sequential.sasrec.hidden == 16


@pytest.mark.parametrize(("key", "value", "message"), [
    ("sasrec.dropuot", 0.1, "names no setting"),
    ("sasrec", 0.1, "takes a SASRecConfig"),
    ("train.epochs", "many", "takes a int"),
    ("sasrec.n_layers", 0, "n_layers"),
])
def test_a_bad_grid_is_refused_naming_the_key_before_anything_trains(key, value, message):
    cfg = load_config()
    with pytest.raises(ValueError, match=message):
        replace_path(cfg.train_sequential, key, value)
