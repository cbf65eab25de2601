"""Stopping a server started in its own process group (``start_new_session=True``): ``mlflow models serve`` and the
uvicorn it starts, used by the serving test and the serving benchmark."""
from __future__ import annotations

import os
import signal
import subprocess


def stop(proc: subprocess.Popen, grace_s: float = 15) -> None:
    """SIGTERM to ``proc``'s process group, SIGKILL if it lingers past ``grace_s``."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=grace_s)
