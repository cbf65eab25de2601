"""Starting ``mlflow models serve`` in its own process group (``start_new_session=True``) and stopping it with the
uvicorn it starts: used by the serving test and the serving benchmark."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def mlflow_serve(model_uri: str, port: int, log: Path, env: dict, workers: int = 1,
                 start_s: float = 180) -> subprocess.Popen:
    """``mlflow models serve -m model_uri`` on 127.0.0.1:``port`` as docs/operations.md starts it, the venv's bin on
    PATH (it runs ``uvicorn`` by name), output to ``log``; returns once ``/ping`` answers. Raises RuntimeError with
    the log's tail when the server exits or does not answer in ``start_s`` seconds (then it is stopped)."""
    env = {**env, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"}
    with log.open("w") as out:  # the child keeps its own copy of the file
        proc = subprocess.Popen(["mlflow", "models", "serve", "-m", model_uri, "--env-manager", "local", "--host",
                                 "127.0.0.1", "--port", str(port), "--workers", str(workers)], env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + start_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow models serve exited with {proc.returncode}: {log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(0.5)
    stop(proc, grace_s=20)
    raise RuntimeError(f"the server did not answer /ping in {start_s:.0f} s: {log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen, grace_s: float = 15) -> None:
    """SIGTERM to ``proc``'s process group, SIGKILL if it lingers past ``grace_s``."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=grace_s)
