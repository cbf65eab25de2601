"""``baselines.py --merge``: results of separate runs combine only when their SASRec runs are the same models."""
from __future__ import annotations

import copy
import json

import pytest

from tests.benchmarks import baselines


def result(variant: str, sasrec_ndcg: list[float], best: list[int]) -> dict:
    def model(ndcg: list[float], **extra) -> dict:
        r = {"training": [{"best_epoch": b, "commit": "abc1234"} for b in best]}
        for key in ("NDCG@10", "HR@10", "sampled100_NDCG@10", "short_history_NDCG@10", "tail_items_NDCG@10",
                    "valid_NDCG@10"):
            r |= {f"{key}_mean": sum(ndcg) / len(ndcg), f"{key}_std": 0.001, f"{key}_per_seed": ndcg}
        return r | {"epoch_seconds_mean": 10.0, "seconds_to_best_mean": 100.0} | extra

    delta = {"delta_vs_sasrec": -0.01, "delta_vs_sasrec_ci95": [-0.02, -0.005], "verdict": "worse"}
    for s in baselines.SLICES:
        delta |= {f"{s}_delta_vs_sasrec": -0.01, f"{s}_delta_vs_sasrec_ci95": [-0.02, -0.005], f"{s}_verdict": "worse"}
    ref = {f"{w}:{n}": 0.03 for w, n in baselines.HEADLINE}
    return {"seeds": [42, 43], "ds": "2026-11-24", "config": "c.yaml", "dataset": "beauty", "protocol": "loo",
            "bootstrap": {"resamples": 2000}, "overrides": [f"variant={variant}"], "references": {"wals": ref},
            "models": {"sasrec": model(sasrec_ndcg), variant: model([0.05, 0.05], **delta)},
            "machine": {"command": f"python baselines.py --variants sasrec,{variant}", "date": "2026-11-29"}}


def test_merge_combines_variants_of_identical_sasrec_runs_and_refuses_anything_else(tmp_path, monkeypatch):
    written = {}
    monkeypatch.setattr(baselines, "write_results",
                        lambda name, payload, rows, notes: written.update(name=name, payload=payload, rows=rows,
                                                                          notes=notes))
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(result("grasp", [0.06, 0.059], [120, 139])))
    b.write_text(json.dumps(result("grasp[metadata]", [0.06, 0.059], [120, 139])))
    assert baselines.merge([a, b], "") == 0
    payload = written["payload"]
    assert written["name"] == "baselines"
    assert list(payload["models"]) == ["sasrec", "grasp", "grasp[metadata]"]
    assert payload["models"]["grasp[metadata]"]["source"] == str(b)
    assert [s["models"] for s in payload["sources"]] == [["grasp"], ["grasp[metadata]"]]
    assert [r[0] for r in written["rows"][1:]] == ["sasrec", "grasp", "grasp[metadata]", "wals"]
    assert any(n.startswith("merged:") for n in written["notes"])

    def refused(other: dict, *words: str) -> None:
        b.write_text(json.dumps(other))
        with pytest.raises(SystemExit) as e:
            baselines.merge([a, b], "")
        for w in words:
            assert w in str(e.value)

    refused(result("grasp[metadata]", [0.06, 0.058], [120, 139]), "NDCG@10_per_seed", "different SASRec")
    refused(result("grasp[metadata]", [0.06, 0.059], [120, 140]), "best_epoch")
    refused(result("grasp", [0.06, 0.059], [120, 139]), "grasp is in")
    other = result("grasp[metadata]", [0.06, 0.059], [120, 139])
    other["seeds"] = [42, 44]
    refused(other, "seeds")
    no_sasrec = copy.deepcopy(other)
    del no_sasrec["models"]["sasrec"]
    refused(no_sasrec, "no SASRec run")
    with pytest.raises(SystemExit, match="two or more"):
        baselines.merge([a], "")

    # a merged file merges again (the next variant, llmrec say): its sources and the models' own sources carry over
    b.write_text(json.dumps(result("grasp[metadata]", [0.06, 0.059], [120, 139])))
    assert baselines.merge([a, b], "") == 0
    merged, c = tmp_path / "merged.json", tmp_path / "c.json"
    merged.write_text(json.dumps(written["payload"]))
    c.write_text(json.dumps(result("llmrec", [0.06, 0.059], [120, 139])))
    assert baselines.merge([merged, c], "") == 0
    payload = written["payload"]
    assert list(payload["models"]) == ["sasrec", "grasp", "grasp[metadata]", "llmrec"]
    assert [s["file"] for s in payload["sources"]] == [str(a), str(b), str(c)]
    assert payload["models"]["grasp"]["source"] == str(a) and payload["models"]["llmrec"]["source"] == str(c)
    assert any("llmrec's s/epoch" in n for n in written["notes"])


def test_training_figures_take_llmrecs_last_stage_and_tell_a_reused_checkpoint():
    fit = {"best_epoch": 3, "epochs_run": 5, "resumed_from_epoch": 0, "epoch_seconds": 2.0, "seconds_to_best": 6.0}
    figures, trained = baselines.training_figures(fit)
    assert trained and figures["best_epoch"] == 3 and figures["epoch_seconds"] == 2.0
    figures, trained = baselines.training_figures({**fit, "resumed_from_epoch": 5})   # the stage trained nothing
    assert not trained
    llmrec = {"stages": {"stage1": {**fit, "epoch_seconds": 9.0}, "stage2": {**fit, "best_epoch": 1}}}
    figures, trained = baselines.training_figures(llmrec)
    assert trained and figures["best_epoch"] == 1 and figures["epoch_seconds"] == 2.0


def test_a_one_seed_screening_row_carries_the_users_interval_and_no_verdict():
    import numpy as np

    rng = np.random.default_rng(0)
    users = np.arange(400)
    ranks = {"users": users, "full": rng.integers(0, 30, 400),
             **{s: rng.random(400) < 0.3 for s in baselines.SLICES}}
    better = {**ranks, "full": np.maximum(ranks["full"] - 3, 0)}          # every target ranked higher
    r = baselines.compare([{"ranks": better, "metrics": {"full": {"users": 400}}}],
                          [{"ranks": ranks, "metrics": {"full": {"users": 400}}}], "t", 200)
    assert r["verdict"] == baselines.SCREENING and r["delta_vs_sasrec"] > 0
    assert r["delta_vs_sasrec_ci95"] == r["delta_vs_sasrec_ci95_users_only"] and r["delta_vs_sasrec_ci95"][0] > 0
    assert all(r[f"{s}_verdict"] == baselines.SCREENING for s in baselines.SLICES)
