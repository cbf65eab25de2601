"""pipelines.summary: summary.json rebuilt from hand-written stage records."""
from __future__ import annotations

import json

from pipelines.summary import is_done, successful_days, write_summary

DS = "2026-01-01"


def _write(path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def test_summary_from_records(tmp_path):
    run = tmp_path / "runs" / DS
    _write(run / "stages" / "split.json", {"status": "success", "seconds": 2.5, "rows_out": 10,
                                           "tables": {"sequences": 10, "train": 6, "users_dropped": 1},
                                           "outputs": {"sequences": "/x"}})
    _write(run / "stages" / "ingest.json", {"status": "success", "seconds": 1.0, "rows_out": 12,
                                            "tables": {"interactions": 12}, "outputs": {}})
    _write(run / "metrics.json", {"wals": {"full": {"NDCG@10": 0.5}, "valid": {"full": {}}, "other": 1}})
    (run / "stages" / "broken.json").write_text("{not json")  # a record being written right now
    s = write_summary(run, DS, "shop")
    assert s == {"ds": DS, "dataset": "shop", "status": "partial",
                 "stages": {"ingest": {"status": "success", "seconds": 1.0, "rows_out": 12},
                            "split": {"status": "success", "seconds": 2.5, "rows_out": 10}},
                 "tables": {"interactions": 12, "train": 6},                     # only TABLE_KEYS counts
                 "metrics": {"wals": {"full": {"NDCG@10": 0.5}, "valid": {"full": {}}}},
                 "mlflow": {"run_id": None, "tracking_uri": None, "models": []}}
    assert json.loads((run / "summary.json").read_text()) == s
    assert list(s["stages"]) == ["ingest", "split"]                           # pipeline order, not file order
    assert not is_done(tmp_path, DS)


def test_a_failed_stage_fails_the_day_and_names_itself(tmp_path):
    run = tmp_path / "runs" / DS
    _write(run / "stages" / "ingest.json", {"status": "success", "seconds": 1.0, "rows_out": 1})
    _write(run / "stages" / "wals.json", {"status": "failed", "seconds": 0.1, "error": "ValueError: bad",
                                          "traceback": "Traceback ..."})
    s = write_summary(run, DS, "shop")
    assert (s["status"], s["failed_stage"], s["error"]) == ("failed", "wals", "ValueError: bad")
    assert s["stages"]["wals"] == {"status": "failed", "seconds": 0.1, "error": "ValueError: bad", "rows_out": None}


def test_success_needs_every_stage(tmp_path):
    from pipelines.graph import ORDER

    for ds in ("2026-01-02", "2026-01-01", "2026-01-03"):
        run = tmp_path / "runs" / ds
        for name in ORDER[:-1] if ds == "2026-01-03" else ORDER:
            _write(run / "stages" / f"{name}.json", {"status": "success", "seconds": 0.0, "rows_out": 0})
        assert write_summary(run, ds, "shop")["status"] == ("partial" if ds == "2026-01-03" else "success")
    assert successful_days(tmp_path) == ["2026-01-01", "2026-01-02"]
    assert is_done(tmp_path, "2026-01-01") and not is_done(tmp_path, "2026-01-03")
    assert not is_done(tmp_path, "2026-02-01")
