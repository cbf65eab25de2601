"""The wals stage's record: which seed the fits used (the top-level seed unless wals.seed is set)."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from pipelines.config import load_config
from pipelines.context import StageContext
from pipelines.stages import wals as stage


@pytest.mark.parametrize(("sets", "seed"), [(["seed=7"], 7), (["seed=7", "wals.seed=3"], 3), ([], 42)])
def test_the_wals_fits_use_and_report_the_resolved_seed(monkeypatch, tmp_path, sets, seed):
    used = []

    def fit(ctx, p, splits, zone, **warm):
        used.append(p.seed)
        return {"user_factors": 3, "item_factors": 4, "fit_seconds": 0.1}

    monkeypatch.setattr(stage, "fit", fit)
    monkeypatch.setattr(stage.refresh, "plan", lambda ctx: SimpleNamespace(incremental=False, mode="full",
                                                                           reason="test", base=None))
    res = stage.run(StageContext(load_config(None, sets), "2026-01-01", Path(tmp_path)))
    assert used == [seed, seed]                                                # the train-only and the final fit
    assert res.details["seed"] == seed                                         # in the stage record and summary.json
