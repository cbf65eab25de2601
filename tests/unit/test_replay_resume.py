"""``nightly_replay.py --resume``: a stopped replay goes on from the (mode, day) it had not finished, that day from its
start, and only with the settings it was started with."""
from __future__ import annotations

import json
import sys

import pytest

from tests.benchmarks import nightly_replay


class Stop(Exception):
    pass


def test_a_stopped_replay_resumes_at_the_unfinished_day_from_its_start(tmp_path, monkeypatch):
    calls: list[tuple[str, str]] = []
    stop_at = {"at": ("full", "2014-07-02")}

    def run_day(home, ds, config, sets, log, until=None, stages=None):
        mode = home.name
        (home / "runs" / ds).mkdir(parents=True, exist_ok=True)
        (home / "runs" / ds / "partial").write_text("x")
        if mode != "seed":
            calls.append((mode, ds))
            if (mode, ds) == stop_at["at"]:
                (home / "checkpoints" / "train_sequential" / ds).mkdir(parents=True)
                raise Stop
            (home / "runs" / ds / "partial").unlink()
        (home / "runs" / ds / "summary.json").write_text("{}")
        return 1.0 if mode == "incremental" else 4.0

    def day_record(home, ds, wall):
        assert not (home / "runs" / ds / "partial").exists(), "a resumed day must start from a clean run folder"
        return {"wall_seconds": wall, "stages": {}, "test_NDCG@10": {"sasrec": 0.05}}

    written = []
    monkeypatch.setattr(nightly_replay, "run_day", run_day)
    monkeypatch.setattr(nightly_replay, "day_record", day_record)
    monkeypatch.setattr(nightly_replay, "write_results", lambda name, payload, rows, notes: written.append(
        (payload, notes, rows)))
    argv = ["nightly_replay.py", "--from", "2014-07-01", "--to", "2014-07-03", "--work", str(tmp_path)]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(Stop):
        nightly_replay.main()
    assert calls == [("incremental", "2014-07-01"), ("full", "2014-07-01"), ("incremental", "2014-07-02"),
                     ("full", "2014-07-02")]
    stop_at["at"] = None
    calls.clear()
    monkeypatch.setattr(sys, "argv", [*argv, "--resume"])
    assert nightly_replay.main() == 0
    assert calls == [("full", "2014-07-02"), ("incremental", "2014-07-03"), ("full", "2014-07-03")]
    assert not (tmp_path / "full" / "checkpoints" / "train_sequential" / "2014-07-02").exists()
    payload, notes, _ = written[-1]
    assert payload["days_done"] == ["2014-07-01", "2014-07-02", "2014-07-03"]
    # the resumed day is reported but left out of the clean mean (its caches held part of the stopped run's work)
    assert payload["ratio_days"] == ["2014-07-03"] and payload["incremental_over_full_seconds_clean"] == 0.25
    assert set(payload["per_day_ratio"]) == {"2014-07-02", "2014-07-03"}
    assert payload["detail"]["full"]["2014-07-02"]["resumed"] is True
    assert all("commit" in payload["detail"][m][d] for m in ("full", "incremental") for d in payload["days_done"])
    assert any("full 2014-07-02" in n for n in notes) and any(n.startswith("code: ") for n in notes)

    monkeypatch.setattr(sys, "argv", [*argv, "--resume", "--full-every-days", "3"])
    with pytest.raises(SystemExit, match="other settings"):
        nightly_replay.main()

    # a day whose run is still alive (the replay stopped, its child not) is not cleared under it
    from pipelines import locks

    (tmp_path / "full" / "runs" / "2014-07-03").mkdir(parents=True, exist_ok=True)
    with locks.hold(tmp_path / "full" / "runs" / "2014-07-03", "day", exclusive=True, what="a live run"):
        with pytest.raises(SystemExit, match="refused"):
            nightly_replay.clear_day(tmp_path / "full", "2014-07-03")
    assert (tmp_path / "full" / "runs" / "2014-07-03").exists()

    # homes without a state file (an older replay's) are not wiped by --resume
    (tmp_path / "replay_state.json").unlink()
    monkeypatch.setattr(sys, "argv", [*argv, "--resume"])
    with pytest.raises(SystemExit, match="no replay_state.json"):
        nightly_replay.main()
    assert (tmp_path / "incremental" / "runs" / "2014-07-01").exists()


def fake_runs(monkeypatch, after=None) -> tuple[list[tuple[str, str]], list[tuple[dict, list[str], list]]]:
    """Days that only leave a summary.json: the (home, day) runs in order, and what write_results was given
    (payload, notes, table rows).
    ``after(home_name, ds)`` is called after each run of a replay home."""
    calls: list[tuple[str, str]] = []
    written: list[tuple[dict, list[str], list]] = []

    def run_day(home, ds, config, sets, log, until=None, stages=None):
        (home / "runs" / ds).mkdir(parents=True, exist_ok=True)
        (home / "runs" / ds / "summary.json").write_text("{}")
        if home.name != "seed":
            calls.append((home.name, ds))
            if after:
                after(home.name, ds)
        return {"incremental": 1.0, "full-ahead": 2.0}.get(home.name, 4.0)

    monkeypatch.setattr(nightly_replay, "run_day", run_day)
    monkeypatch.setattr(nightly_replay, "day_record", lambda home, ds, wall: {
        "wall_seconds": wall, "stages": {}, "test_NDCG@10": {"sasrec": 0.05}})
    monkeypatch.setattr(nightly_replay, "write_results", lambda name, payload, rows, notes: written.append(
        (payload, notes, rows)))
    return calls, written


def test_a_stop_file_stops_between_two_runs_and_nothing_is_rerun(tmp_path, monkeypatch):
    def after(home_name, ds):
        if (home_name, ds) == ("full", "2014-07-01"):
            (tmp_path / "stop").write_text("")  # asked for while this run was going

    calls, _ = fake_runs(monkeypatch, after)
    argv = ["nightly_replay.py", "--from", "2014-07-01", "--to", "2014-07-02", "--work", str(tmp_path)]
    monkeypatch.setattr(sys, "argv", argv)
    assert nightly_replay.main() == 0
    assert calls == [("incremental", "2014-07-01"), ("full", "2014-07-01")] and not (tmp_path / "stop").exists()
    monkeypatch.setattr(sys, "argv", [*argv, "--resume"])
    (tmp_path / "stop").write_text("")  # a stale one (the replay had already stopped) does not stop the next start
    assert nightly_replay.main() == 0
    assert calls[2:] == [("incremental", "2014-07-02"), ("full", "2014-07-02")]
    state = json.loads((tmp_path / "replay_state.json").read_text())
    assert not any(r.get("resumed") for m in state["out"].values() for r in m.values())


def test_ahead_runs_the_incremental_days_then_that_full_day_in_a_copy_and_keeps_it_out_of_the_mean(tmp_path,
                                                                                                   monkeypatch):
    calls, written = fake_runs(monkeypatch)
    argv = ["nightly_replay.py", "--from", "2014-07-01", "--to", "2014-07-04", "--work", str(tmp_path)]
    monkeypatch.setattr(sys, "argv", [*argv, "--ahead", "2014-07-09"])
    with pytest.raises(SystemExit, match="not a day"):
        nightly_replay.main()
    monkeypatch.setattr(sys, "argv", [*argv, "--ahead", "2014-07-03"])
    assert nightly_replay.main() == 0
    assert calls == [("incremental", "2014-07-01"), ("incremental", "2014-07-02"), ("incremental", "2014-07-03"),
                     ("full-ahead", "2014-07-03"), ("full", "2014-07-01"), ("full", "2014-07-02"),
                     ("incremental", "2014-07-04"), ("full", "2014-07-04")]
    assert not (tmp_path / "full" / "runs" / "2014-07-03").exists()  # the full home's own caches stay as they were
    # the first results, once the ahead day is done in both modes, also show the days one mode has done
    payload, notes, rows = written[0]
    assert payload["days_done"] == ["2014-07-03"] and payload["incremental_over_full_seconds"] is None
    assert [r[:2] for r in rows[1:]] == [("2014-07-01", "incremental"), ("2014-07-02", "incremental"),
                                         ("2014-07-03", "incremental"), ("2014-07-03", "full")]
    assert "in one mode only: incremental 2014-07-01, incremental 2014-07-02" in notes[0]
    payload, notes, rows = written[-1]
    assert "one mode only" not in notes[0]
    assert payload["days_done"] == ["2014-07-01", "2014-07-02", "2014-07-03", "2014-07-04"]
    # the mean takes every day after the first; the clean one leaves the ahead day (1 s / 2 s) out
    assert payload["ratio_days"] == ["2014-07-02", "2014-07-04"]
    assert payload["incremental_over_full_seconds"] == round((0.25 + 0.5 + 0.25) / 3, 4)
    assert payload["incremental_over_full_seconds_clean"] == 0.25
    assert payload["detail"]["full"]["2014-07-03"]["ahead"]["caches_of"] == "2014-06-30"
    assert any("--ahead" in n and "2014-07-03" in n for n in notes)
    # once done, --ahead is a no-op on resume
    calls.clear()
    monkeypatch.setattr(sys, "argv", [*argv, "--ahead", "2014-07-03", "--resume"])
    assert nightly_replay.main() == 0 and calls == []
