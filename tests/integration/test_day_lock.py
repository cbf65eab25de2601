"""One day, one run: concurrent runs of a ``ds`` on one home are refused with who holds it; the DAG's own tasks of
one day share it; a killed holder leaves no stale lock; an unwritable home gets a message, not a traceback."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from pipelines import runner
from pipelines.config import load_config
from pipelines.locks import DayBusy, hold

DS = "2026-01-01"


def cli(home, *args, timeout=300):
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *args, "--home", str(home)], capture_output=True,
                          text=True, timeout=timeout)


def test_a_second_run_of_the_same_day_is_refused_naming_the_holder(tmp_path):
    run_dir = tmp_path / "runs" / DS
    with hold(run_dir, "day", exclusive=True, what="recpipe run of ds=2026-01-01"):
        proc = cli(tmp_path, "run", "--ds", DS, "--stages", "ingest")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"is being run by pid {os.getpid()}" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "staging").exists(), "the refused run wrote something"
    # another day on the same home is not blocked
    with hold(run_dir, "day", exclusive=True, what="x"):
        other = runner.run(load_config(None, []), "2026-01-02", tmp_path, ["ingest"])
    assert other["status"] == "partial" and "ingest" in other["stages"]  # ran: only ingest was asked for


def test_tasks_of_one_day_share_it_but_a_task_runs_once_and_a_manual_run_waits(tmp_path):
    run_dir = tmp_path / "runs" / DS
    with hold(run_dir, "day", exclusive=False, what="task wals"), hold(run_dir, "wals", exclusive=True, what="wals"):
        with hold(run_dir, "day", exclusive=False, what="task describe"):  # side by side in the DAG
            pass
        with pytest.raises(DayBusy, match=r"is being run by pid \d+ on .* \(wals\)"):
            with hold(run_dir, "wals", exclusive=True, what="retry of wals"):
                pass
        with pytest.raises(DayBusy, match="is being run by"):
            runner.run(load_config(None, []), DS, tmp_path, ["ingest"])


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    code = ("import sys, time; sys.path.insert(0, %r); from pipelines.locks import hold; "
            "h = hold(%r, 'day', True, 'victim'); h.__enter__(); print('held', flush=True); time.sleep(60)"
            % (os.getcwd(), str(tmp_path / "runs" / DS)))
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(DayBusy, match="victim"):
            with hold(tmp_path / "runs" / DS, "day", exclusive=True, what="me"):
                pass
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    time.sleep(0.1)
    with hold(tmp_path / "runs" / DS, "day", exclusive=True, what="me"):
        pass


def test_an_unwritable_home_gets_a_message_not_a_traceback():
    proc = cli("/sys/recpipe-unwritable-home", "run", "--ds", DS, "--stages", "ingest", timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "writable" in proc.stderr, proc.stderr
