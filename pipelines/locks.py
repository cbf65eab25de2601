"""Per-day locks, so a scheduler retry, a manual backfill and a second ``recpipe run`` of the same ``ds`` on one home
cannot interleave (one of them would read tables the other is replacing, or both train into one checkpoint folder).

* ``recpipe run``/``stage``/``backfill`` hold the day's lock exclusively for the whole run.
* An Airflow task (``runner.run_task``) holds the day's lock shared (the DAG's own tasks of one day run side by side:
  ``wals`` beside ``describe``) and its stage's lock exclusively, so a second copy of a task that is still running is
  refused, and so is a manual run of that day while the DAG works on it.

Locks are ``flock`` on files under ``runs/<ds>/.locks/``: the kernel releases them when the holder dies, so a killed
run never leaves a stale lock. Who holds one (pid, host, command, since) is written beside it and named in the
refusal.

``waiting`` is the blocking kind, for short work that must happen once however many processes reach it together
(creating a home's MLflow store): the second process waits for the first to finish, then finds the work done.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Iterator


class DayBusy(RuntimeError):
    """Another process holds the lock of this day (or stage)."""


def _holders(lock_dir: Path, name: str) -> list[dict]:
    out = []
    for f in sorted(lock_dir.glob(f"{name}.holder-*.json")):
        try:
            info = json.loads(f.read_text())
            os.kill(int(info["pid"]), 0)  # still alive (on this host)
            out.append(info)
        except (OSError, ValueError, KeyError):
            continue
    return out


def _open(lock: Path, label: str):
    """The lock file ``lock`` opened for ``flock`` (its folder made), or an ``OSError`` naming ``label`` and the fix."""
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        return open(lock, "a+")  # noqa: SIM115 (held open for the lock's lifetime)
    except OSError as exc:
        raise OSError(exc.errno, f"cannot create {label}: {exc.strerror}; the home must be writable (choose "
                                 "another --home or RECPIPE_HOME, or fix its permissions)") from None


def _who(lock: Path) -> str:
    """The live holders of ``lock`` as recorded beside it, for a refusal."""
    held = _holders(lock.parent, lock.stem)
    return "; ".join(f"pid {h['pid']} on {h['host']} since {h['since']} ({h['what']})" for h in held) or \
        "another process"


@contextlib.contextmanager
def _holding(fh, lock: Path, what: str, **extra) -> Iterator[None]:
    """With ``fh`` locked: record who holds ``lock`` beside it while the block runs, then release both."""
    holder = lock.parent / f"{lock.stem}.holder-{os.getpid()}.json"
    holder.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "what": what,
                                  "since": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), **extra}))
    try:
        yield
    finally:
        holder.unlink(missing_ok=True)
        fcntl.flock(fh, fcntl.LOCK_UN)
        fh.close()


@contextlib.contextmanager
def hold(run_dir: Path, name: str, exclusive: bool, what: str) -> Iterator[None]:
    """Hold ``runs/<ds>/.locks/<name>.lock`` (exclusive or shared) or raise ``DayBusy`` naming who holds it."""
    lock = Path(run_dir) / ".locks" / f"{name}.lock"
    fh = _open(lock, f"the run lock under {lock.parent}")
    try:
        fcntl.flock(fh, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        raise DayBusy(f"{what} refused: {Path(run_dir).name} is being run by {_who(lock)}. Wait for it to finish (or "
                      "stop it), then run again; two runs of one day on one home would replace each other's "
                      "tables") from None
    with _holding(fh, lock, what, command=" ".join(sys.argv)[:300]):
        yield


@contextlib.contextmanager
def waiting(lock: Path, what: str, timeout_s: float = 600.0) -> Iterator[None]:
    """Hold the lock file ``lock`` exclusively, waiting up to ``timeout_s`` while another process holds it; then
    ``DayBusy`` naming the holder. For work of seconds that must be done once (``pipelines.registry``: a store's
    creation), where a second process should wait for the first rather than be refused."""
    lock = Path(lock)
    fh = _open(lock, f"the lock {lock}")
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() > deadline:
                fh.close()
                raise DayBusy(f"{what} gave up after {timeout_s:.0f} s waiting for {lock}, held by {_who(lock)}; "
                              "stop it or wait for it, then run again") from None
            time.sleep(0.05)
    with _holding(fh, lock, what):
        yield
