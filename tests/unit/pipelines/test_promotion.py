"""pipelines.promotion on a hand-written day: the evaluation set, and top-k scoring of a served model."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from pipelines import cli
from pipelines.config import load_config
from pipelines.promotion import eval_set, latest_successful_ds, score_topk
from pipelines.serving import TopKModel, save_scorer
from tests.registry_home import BETTER, DS, ITEMS, WORSE, register, write_day


@pytest.fixture
def home(tmp_path):
    return write_day(tmp_path)


def test_eval_set_holds_every_test_user_with_their_earlier_items(home):
    es = eval_set(load_config(), home, DS)
    assert es == {"user_ids": ["u0", "u1"],
                  "exclude": [["i1", "i2", "i3"], ["i2"]],     # u1's repeat of its target is not excluded
                  "targets": ["i4", "i5"]}


class Served:
    """What ``mlflow.pyfunc.load_model`` returns for the serving pyfunc: ``predict(data, params)``."""

    def __init__(self, path):
        self.model = TopKModel().load(path)

    def predict(self, data, params=None):
        return self.model.predict(None, data, params)


def test_score_topk_ranks_through_the_served_top_k(home, tmp_path):
    scores = np.array([[0.0], [6], [5], [4], [3], [2], [1]], np.float32)    # item i_k scores 7 - k
    path = save_scorer(tmp_path / "m", "test", ["u0", "u1", "u2"], ["", *ITEMS], user_emb=np.ones((3, 1), np.float32),
                       item_emb=scores, item_bias=np.zeros(7, np.float32), hist_indptr=np.zeros(4, np.int64),
                       hist_indices=np.zeros(0, np.int32), top_k=5)
    es = eval_set(load_config(), home, DS)
    # u0: i1..i3 excluded -> i4 first (rank 0); u1: i2 excluded -> i1, i3, i4, i5 (rank 3)
    got = score_topk(Served(path), es["user_ids"], es["exclude"], es["targets"], (1, 3, 5))
    assert got == pytest.approx({"HR@1": 0.5, "HR@3": 0.5, "HR@5": 1.0, "NDCG@1": 0.5, "NDCG@3": 0.5,
                                 "NDCG@5": (1.0 + 1.0 / math.log2(5)) / 2, "users": 2})
    # a target beyond the list counts nowhere
    assert score_topk(Served(path), ["u1"], [["i2"]], ["i5"], (1, 2))["HR@2"] == 0.0


def test_score_topk_asks_a_loaded_model_for_no_more_than_its_catalogue(home, tmp_path):
    """A served model refuses a k above its catalogue (HTTP 400): on six items, k=20 is asked as 6, same metrics."""
    path = save_scorer(tmp_path / "m", "test", ["u0", "u1", "u2"], ["", *ITEMS], user_emb=np.ones((3, 1), np.float32),
                       item_emb=np.array([[0.0], [6], [5], [4], [3], [2], [1]], np.float32),
                       item_bias=np.zeros(7, np.float32), hist_indptr=np.zeros(4, np.int64),
                       hist_indices=np.zeros(0, np.int32), top_k=5)

    class Loaded(Served):  # as mlflow.pyfunc.load_model returns it
        def unwrap_python_model(self):
            return self.model

    es = eval_set(load_config(), home, DS)
    got = score_topk(Loaded(path), es["user_ids"], es["exclude"], es["targets"], (5, 10, 20))
    assert got["HR@20"] == got["HR@5"] == 1.0


def test_latest_successful_ds_names_the_folder_when_there_is_none(tmp_path):
    with pytest.raises(LookupError, match="no successful run under"):
        latest_successful_ds(tmp_path)


def test_every_decision_is_kept_and_a_challenger_is_judged_on_its_own_day(home):
    """Two days, two versions: v1 (day 1) becomes champion, v2 (day 2) is judged on day 2 without --ds, and both
    decisions stay on record (the second used to overwrite the first, judged on whichever day had a summary)."""
    from pipelines import promotion, registry

    ds2 = "2026-01-02"
    write_day(home, ds2)
    cfg = load_config(None, [])
    c = registry.client(cfg, home)
    v1 = register(home, DS, WORSE)
    first = promotion.promote(cfg, home, "wals", None)
    assert first["promoted"] and first["ds"] == DS and str(first["challenger"]["version"]) == v1
    v2 = register(home, ds2, BETTER)
    second = promotion.promote(cfg, home, "wals", None)
    assert second["ds"] == ds2 and second["promoted"], second
    log = promotion.decisions(cfg, home, "wals")
    assert [(d["version"], d["ds"], d["decision"]) for d in log] == [(v1, DS, "promoted"), (v2, ds2, "promoted")]
    assert all(d["reason"] and d["trigger"].startswith("cli") and d["time"] for d in log)
    assert str(log[1]["champion"]["version"]) == v1 and "NDCG@10" in log[1]["challenger"]
    tags = c.get_model_version("wals", v1).tags
    assert json.loads(tags["promotion.00001"])["decision"] == "promoted"  # v1's own record is untouched
    assert str(c.get_model_version_by_alias("wals", "champion").version) == v2


def test_promote_promote_rollback_through_the_cli_and_the_history_tells_it(home, capsys):
    """promote v1, promote v2, rollback: champion is back on v1 and the history shows three events with reasons,
    versions, metric values and who asked."""
    from pipelines import registry

    args = ["--home", str(home), "--model", "wals"]
    v1 = register(home, DS, WORSE)
    assert cli.main(["promote", *args]) == 0
    v2 = register(home, DS, BETTER)
    assert cli.main(["promote", *args]) == 0
    assert "PROMOTED: challenger v2 beats champion v1" in capsys.readouterr().out
    assert cli.main(["rollback", *args, "--reason", "v2 broke the shop's front page"]) == 0
    assert f"champion v{v2} -> v{v1}" in capsys.readouterr().out
    c = registry.client(load_config(None, []), home)
    assert str(c.get_model_version_by_alias("wals", "champion").version) == v1
    assert str(c.get_model_version_by_alias("wals", "challenger").version) == v2
    assert cli.main(["promote", *args, "--history"]) == 0
    out = capsys.readouterr().out
    events = [ln for ln in out.splitlines() if not ln.startswith("    reason:")]
    reasons = [ln for ln in out.splitlines() if ln.startswith("    reason:")]
    assert len(events) == 3 and len(reasons) == 3, out
    assert "promote  promoted" in events[0] and "champion none" in events[0] and "champion now v1" in events[0]
    assert "promote  promoted" in events[1] and "challenger v2 NDCG@10=" in events[1] and "delta +" in events[1]
    assert "rollback rolled_back" in events[2] and "champion now v1" in events[2] and "by cli" in events[2]
    assert "no champion yet" in reasons[0] and "beats champion v1" in reasons[1]
    assert "v2 broke the shop's front page" in reasons[2]
    # with nothing earlier on record than v1, a second rollback says what to do instead of guessing
    assert cli.main(["rollback", *args]) == 2
    err = capsys.readouterr().err
    assert "no earlier champion" in err and "--to-version" in err
    # a named version works both ways
    assert cli.main(["rollback", *args, "--to-version", v2]) == 0
    assert str(c.get_model_version_by_alias("wals", "champion").version) == v2
    assert cli.main(["rollback", *args, "--to-version", "99"]) == 2
    assert "has no version 99" in capsys.readouterr().err


def test_a_version_without_its_evaluation_never_becomes_champion(home):
    from pipelines import promotion, registry

    cfg = load_config(None, [])
    c = registry.client(cfg, home)
    v1 = register(home, DS, WORSE)
    promotion.promote(cfg, home, "wals", None)
    v2 = register(home, DS, BETTER, evaluated=False)  # better on the eval set, but its evaluation is missing
    out = promotion.promote(cfg, home, "wals", None)
    assert not out["promoted"] and out["decision"] == "refused" and "no evaluation on record" in out["reason"]
    assert str(c.get_model_version_by_alias("wals", "champion").version) == v1
    with pytest.raises(ValueError, match="no evaluation on record"):
        promotion.rollback(cfg, home, "wals", v2)
    assert [d["decision"] for d in promotion.decisions(cfg, home, "wals")] == ["promoted", "refused"]
    # nor one that no longer loads: its artifacts are gone
    v3 = register(home, DS, BETTER)
    import shutil

    shutil.rmtree(home / "mlflow" / "artifacts")
    out = promotion.promote(cfg, home, "wals", None)
    assert out["decision"] == "refused" and "failed to load or score" in out["reason"], out
    assert str(c.get_model_version_by_alias("wals", "champion").version) == v1 != v3


def test_an_older_day_registered_last_leaves_challenger_on_the_newer_day(home):
    """Days of an Airflow backfill run side by side: a day retried or slower than the next one registers last, and
    moved challenger back to the older day (seen on the scheduler test when day two's training was killed and
    retried). The newest day keeps it; the same day registered again takes it."""
    from pipelines import registry

    c = registry.client(load_config(None, []), home)
    write_day(home, "2026-01-03")
    newer = register(home, "2026-01-03", BETTER)
    older = register(home, DS, WORSE)
    assert str(c.get_model_version_by_alias("wals", "challenger").version) == newer != older
    again = register(home, "2026-01-03", BETTER)
    assert str(c.get_model_version_by_alias("wals", "challenger").version) == again
