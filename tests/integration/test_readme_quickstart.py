"""The README's quick-start block, run as a newcomer runs it: every command as written, in order, from a fresh copy of
the repository in a temporary folder (the working tree's files; the venv is this one, linked, so ``make`` finds it
installed instead of installing it again).

What a newcomer's ``make run`` does at full size (about 5-10 minutes on 2 cores: the default synthetic shop, the
real SmolLM2 describing 150 items and 150 users) is covered stage by stage elsewhere (the scheduler test runs three
whole days); here the Makefile's own ``ARGS`` variable, set in the environment as ``make`` allows, shrinks the shop
and points the LLM stages at the tiny test model and a local OpenAI-compatible server, so the test checks what only
it can: that the commands as written work from a fresh folder and that the report is where the README says."""
from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import small_llmrec
from tests.llm_server import LocalLLMServer

REPO = Path(__file__).resolve().parents[2]
MARKER = "<!-- quickstart: run by tests/integration/test_readme_quickstart.py -->"
pytestmark = pytest.mark.slow


def quickstart_commands(readme: str) -> list[str]:
    """The commands of the fenced block right after ``MARKER`` (comments and blank lines dropped)."""
    assert MARKER in readme, f"README.md lost the line {MARKER!r} above its quick-start block"
    block = readme.split(MARKER, 1)[1].lstrip()
    assert block.startswith("```"), "the quick-start marker must be followed directly by a fenced block"
    body = block.split("\n", 1)[1].split("```", 1)[0]
    return [c for line in body.splitlines() if (c := line.split(" #", 1)[0].strip()) and not c.startswith("#")]


def fresh_copy(dst: Path) -> Path:
    """The working tree's files (tracked and new, not ignored) with their times, and ``.venv`` linked to this one."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True,
                           check=True).stdout.decode().split("\0")
    for f in filter(None, files):
        if (REPO / f).is_file():
            (dst / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / f, dst / f)
    (dst / ".venv").symlink_to(Path(sys.prefix))
    return dst


def newcomer_env(args: list[str]) -> dict[str, str]:
    """This environment less what a newcomer's shell would not have, with ``ARGS`` (the Makefile's pass-through)."""
    drop = ("RECPIPE_", "MAKE", "MFLAGS", "PYTEST_")
    # the Makefile's own variables, and the distributed set-up this process's earlier training left in its environment
    exact = {"VIRTUAL_ENV", "ARGS", "DS", "MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK"}
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop) and k not in exact}
    return env | {"ARGS": " ".join(shlex.quote(a) for kv in args for a in ("--set", kv))}


def small_run(llm_url: str, tiny_llm: Path) -> list[str]:
    return ["synthetic.items_day0=200", "synthetic.users_day0=400", "describe.backend=openai",
            f"describe.openai.base_url={llm_url}", "describe.openai.model=m", "describe.max_items=4",
            "describe.max_users=4", "train_sequential.train.epochs=2", *small_llmrec(tiny_llm)]


def test_the_readme_quick_start_runs_from_a_fresh_folder(tmp_path, tiny_llm_dir):
    commands = quickstart_commands((REPO / "README.md").read_text())
    assert commands and commands[0].startswith("make run"), commands
    root = fresh_copy(tmp_path / "recpipe")
    up_to_date = subprocess.run(["make", "-q", ".venv/.installed"], cwd=root, env=newcomer_env([]))
    assert up_to_date.returncode == 0, "the venv is older than the lock files: run `make install` first"
    outputs = []
    with LocalLLMServer() as llm:
        env = newcomer_env(small_run(llm.base_url, tiny_llm_dir))
        for cmd in commands:
            proc = subprocess.run(cmd, shell=True, cwd=root, env=env, capture_output=True, text=True, timeout=900)
            assert proc.returncode == 0, f"`{cmd}` failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
            outputs.append(proc.stdout)
    summary = next((root / ".recpipe" / "runs").glob("*/summary.json"))
    assert json.loads(summary.read_text())["status"] == "success"
    assert any(out.lstrip().startswith("# ") for out in outputs), "no command printed the run's report"
