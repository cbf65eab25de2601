"""pipelines.training.distributed: the single-process recipe leaves no port of its own to its child processes."""
from __future__ import annotations

import subprocess
import sys

CHILD = "from pipelines.training.distributed import init_distributed; print(init_distributed())"
PARENT = f"""
import os, subprocess, sys
from pipelines.training.distributed import init_distributed
init_distributed()
assert "MASTER_PORT" not in os.environ, os.environ["MASTER_PORT"]
import deepspeed.comm.comm as dscomm
built = sorted(os.listdir(os.environ["TORCH_EXTENSIONS_DIR"]))
print("SHM", dscomm.cdb.shm_comm_op, built)
child = subprocess.run([sys.executable, "-c", {CHILD!r}], capture_output=True, text=True, timeout=120)
print("CHILD", child.returncode, child.stdout.strip().splitlines()[-1:], child.stderr.strip()[-300:])
"""


def test_a_child_of_a_process_that_trained_sets_up_its_own_group(tmp_path):
    """A process that trained in-process (the suite, a notebook, a long-lived worker) holds its MASTER_PORT; a child
    that inherited the variable failed with EADDRINUSE binding the same port (seen when a test ran `make run`, and
    when Airflow's tasks were started from such a process)."""
    env = {"PYTHONDONTWRITEBYTECODE": "1", "PATH": "/usr/bin:/bin", "TORCH_EXTENSIONS_DIR": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-c", PARENT], capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # and on CPU it compiled nothing: DeepSpeed's shared-memory all-reduce (inference only) is skipped, not built
    assert "SHM None []" in proc.stdout, proc.stdout[-500:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("CHILD"))
    assert line.startswith("CHILD 0 ['(0, 1)']"), line
