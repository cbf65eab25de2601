"""Adversarial runs through the real CLI: two runs of one day started together on one home."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow
DS = "2026-01-01"


def test_two_runs_of_one_day_started_together(tmp_path):
    """One runs the day, the other is refused at once naming the holder (exit 2). The winner's record is its own:
    it says success and exits 0 (before the per-day lock the loser's failure record overwrote the winner's summary,
    both trained into one checkpoint folder and one deleted the other's MLflow run: reliability issue, part two, 6)."""
    cmd = [sys.executable, "-m", "pipelines.cli", "run", "--home", str(tmp_path), "--ds", DS, "--until", "split"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 2], [o[1][-1500:] for o in outs]
    win, lose = (outs[0], outs[1]) if procs[0].returncode == 0 else (outs[1], outs[0])
    assert "is being run by pid" in lose[1] and "Traceback" not in lose[1]
    assert "failed" not in win[0]
    summary = json.loads((tmp_path / "runs" / DS / "summary.json").read_text())
    assert summary["status"] == "partial" and list(summary["stages"]) == ["ingest", "validate", "split"]
    assert all(s["status"] == "success" for s in summary["stages"].values())
    # the day is free again once the winner is done: a second run goes through
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-1500:]
