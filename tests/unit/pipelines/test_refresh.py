"""pipelines.refresh: the day's plan from the days already in the home, and carrying rows across days by id."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pipelines.config import load_config
from pipelines.context import StageContext
from pipelines.refresh import carry_item_rows, plan, rows_by_id


def _done(home, ds: str, mode: str | None, status: str = "success") -> None:
    d = home / "runs" / ds
    d.mkdir(parents=True, exist_ok=True)
    (d / "summary.json").write_text(json.dumps({"ds": ds, "status": status}))
    if mode:
        (d / "refresh.json").write_text(json.dumps({"mode": mode, "base": None, "reason": ""}))


def _plan(home, ds: str, *sets: str):
    return plan(StageContext(load_config(None, ["refresh.mode=incremental", *sets]), ds, home))


def test_the_plan_builds_on_the_latest_day_until_a_full_day_is_due(tmp_path):
    assert plan(StageContext(load_config(), "2026-01-02", tmp_path)).mode == "full"          # refresh.mode=full
    first = _plan(tmp_path, "2026-01-01")
    assert first.mode == "full" and "no earlier day without a failed stage" in first.reason
    _done(tmp_path, "2026-01-01", "full")
    _done(tmp_path, "2026-01-02", "incremental")
    (tmp_path / "runs" / "2026-01-03").mkdir()                       # started, nothing recorded: not a base
    _done(tmp_path, "2026-01-03", None, status="failed")             # a stage failed: not a base either
    p = _plan(tmp_path, "2026-01-04", "refresh.full_every_days=7")
    assert (p.mode, p.base) == ("incremental", "2026-01-02")
    assert json.loads((tmp_path / "runs" / "2026-01-04" / "refresh.json").read_text())["base"] == "2026-01-02"
    due = _plan(tmp_path, "2026-01-08", "refresh.full_every_days=7")
    assert due.mode == "full" and "every 7 days" in due.reason        # seven days after the last full day
    _done(tmp_path, "2026-01-05", None)                               # a day from before refresh counts as full
    assert _plan(tmp_path, "2026-01-06", "refresh.full_every_days=2").base == "2026-01-05"
    _done(tmp_path, "2026-01-06", "incremental", status="partial")   # a --stages run: a base for what it ran
    assert _plan(tmp_path, "2026-01-07", "refresh.full_every_days=7").base == "2026-01-06"


def test_rows_are_carried_by_id_not_by_index():
    prev = np.array([[0.0], [1.0], [2.0], [3.0]], np.float32)          # "", a, b, c
    fresh = np.full((5, 1), -1.0, np.float32)                          # "", a, new, b, c: a new item shifts b and c
    out, carried = rows_by_id(["", "a", "b", "c"], prev, ["", "a", "new", "b", "c"], fresh)
    assert out.ravel().tolist() == [0.0, 1.0, -1.0, 2.0, 3.0] and carried == 4


def test_item_tensors_are_reindexed_and_the_rest_taken_as_is():
    class M(torch.nn.Module):
        def __init__(self, n: int) -> None:
            super().__init__()
            self.item_emb = torch.nn.Embedding(n, 2)
            self.proj = torch.nn.Linear(2, 2)

    old, new = M(3), M(4)                                                # items "", a, b  ->  "", a, z, b
    state = {k: v.detach().clone() for k, v in old.state_dict().items()}
    loaded, info = carry_item_rows(state, ["", "a", "b"], ["", "a", "z", "b"], new)
    fresh_z = new.item_emb.weight[2].detach().clone()
    new.load_state_dict(loaded, strict=False)
    assert torch.equal(new.item_emb.weight[3], old.item_emb.weight[2])   # b moved from row 2 to row 3
    assert torch.equal(new.item_emb.weight[2], fresh_z)                  # the new item keeps its fresh row
    assert torch.equal(new.proj.weight, old.proj.weight)
    assert info["reindexed_by_item"] == ["item_emb.weight"] and info["new_items"] == 1 and info["items_carried"] == 2
    _, other = carry_item_rows({"proj.weight": torch.zeros(3, 3)}, ["", "a"], ["", "a"], new)
    assert other["tensors_skipped"] == ["proj.weight"]                   # another size is not loaded
    assert info["tensors_missing"] == [] and other["tensors_missing"] == ["item_emb.weight", "proj.bias"]


@pytest.mark.parametrize("key,value", [("refresh.mode", "sometimes"), ("refresh.full_every_days", "0")])
def test_bad_refresh_settings_name_the_key(key, value):
    from pipelines.config import ConfigError

    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, [f"{key}={value}"])


def test_an_incremental_llmrec_starts_from_the_base_days_final_weights(tmp_path):
    from pipelines.stages.train_llmrec import warm_context

    _done(tmp_path, "2026-01-01", "full")
    prev = tmp_path / "runs" / "2026-01-01" / "train_llmrec" / "llmrec"
    prev.mkdir(parents=True)
    (prev / "result.json").write_text(json.dumps({"stages": {"stage1": {}, "stage2": {}}, "model_key": "k2"}))
    best = tmp_path / "checkpoints" / "train_llmrec" / "2026-01-01" / "stage2-k2" / "best.pt"
    best.parent.mkdir(parents=True)
    import torch

    torch.save({"w": torch.zeros(2)}, best)
    ctx = StageContext(load_config(None, ["refresh.mode=incremental", "refresh.finetune_epochs=1",
                                          "llmrec.stage1.epochs=4", "llmrec.stage2.epochs=3"]), "2026-01-02", tmp_path)
    warm_ctx, rec = warm_context(ctx)
    c = warm_ctx.cfg.llmrec
    assert c.init_from == str(best) and c.stage1.epochs == c.stage2.epochs == 1
    assert rec == {"mode": "incremental", "reason": rec["reason"], "warm": True, "base": "2026-01-01",
                   "from": str(best), "epochs": {"stage1": 1, "stage2": 1}}
    best.write_bytes(best.read_bytes()[:100])           # cut short (issue 44, 2): named, and the day trains afresh
    cold_ctx, rec = warm_context(ctx)
    assert cold_ctx.cfg.llmrec == ctx.cfg.llmrec and not rec["warm"] and f"{best} is damaged" in rec["why_not"]
    best.unlink()                                       # nothing to start from: trains as a full day would
    cold_ctx, rec = warm_context(ctx)
    assert cold_ctx.cfg.llmrec == ctx.cfg.llmrec and not rec["warm"] and "gone" in rec["why_not"]


def test_the_report_shows_the_days_side_by_side(tmp_path):
    from pipelines.evaluation.report import day_over_day

    def m(x: float) -> dict:
        return {"full": {"NDCG@10": x}}

    for ds, x, mode in (("2026-01-01", 0.10, "full"), ("2026-01-02", 0.12, "incremental")):
        _done(tmp_path, ds, mode)
        stages = {"wals": {"seconds": 2.0, "refresh": {"final_fit": {"warm": mode == "incremental", "base": "x",
                                                                     "users_carried": 5, "items_carried": 4,
                                                                     "users_new": 1, "items_new": 2,
                                                                     "iterations": 3}}},
                  "describe": {"seconds": 9.5, "refresh": {"recomputed": {"item": 2, "user": 3}, "reused": 40}}}
        (tmp_path / "runs" / ds / "summary.json").write_text(json.dumps(
            {"ds": ds, "status": "success", "stages": stages, "metrics": {"wals": m(x), "sasrec": m(x + 0.01)}}))
    _done(tmp_path, "2026-01-09", "full")               # after the day reported: not shown
    ctx = StageContext(load_config(None, ["eval.report_days=3"]), "2026-01-03", tmp_path)
    text = "\n".join(day_over_day(ctx, {"wals": m(0.2), "sasrec": m(0.3)}))
    assert "| day | sasrec | wals |" in text and "| 2026-01-01 | 0.1100 | 0.1000 |" in text
    assert "| 2026-01-03 | 0.3000 | 0.2000 |" in text and "2026-01-09" not in text
    assert "| 2026-01-02 | 2.0 | 9.5 | 11.5 |" in text
    assert "| 2026-01-02 | incremental | wals warm from x: 5 users and 4 items carried, 1 and 2 new, 3 sweeps; " \
           "describe: 2 items and 3 users regenerated, 40 reused |" in text
    assert "| 2026-01-01 | full | wals cold (3 sweeps);" in text
    assert "none recorded" in text                      # no registry in this home yet
