"""Shared helpers of the benchmarks: data preparation, machine description, result files."""
from __future__ import annotations

import datetime as dt
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RESULTS = Path(__file__).resolve().parent / "results"
BEAUTY_DS = "2026-11-24"


def machine() -> dict:
    mem = 0
    try:
        with open("/proc/meminfo") as fh:
            mem = int(fh.readline().split()[1]) // 1024 // 1024
    except OSError:
        pass
    return {"cores": os.cpu_count(), "memory_gib": mem, "platform": platform.platform(),
            "python": platform.python_version(), "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(shlex.quote(a) for a in [sys.executable.split("/")[-1], *sys.argv])}


def copy_partitions(home: Path, bundle: Path, tables: tuple[str, ...], made_by: str) -> None:
    """Copy the ``BEAUTY_DS`` partitions of ``tables`` from ``home`` into ``bundle/home`` (what a GPU node gets);
    exits naming the benchmark (``made_by``) that builds a missing one."""
    for t in tables:
        src = home / "warehouse" / t / f"ds={BEAUTY_DS}"
        if not src.exists():
            sys.exit(f"{src} is missing: run tests/benchmarks/{made_by} --home {home} first")
        dst = bundle / "home" / "warehouse" / t / f"ds={BEAUTY_DS}"
        shutil.rmtree(dst, ignore_errors=True)
        shutil.copytree(src, dst)


def prepare_beauty(data: str, home: str, overrides: list[str]):
    """Ingest, validate and split Amazon Beauty once (re-used when already there); return a StageContext."""
    from pipelines import runner
    from pipelines.config import CONF_DIR, load_config
    from pipelines.context import StageContext

    cfg = load_config(CONF_DIR / "amazon_beauty.yaml", [f"data.path={data}", *overrides])
    ctx = StageContext(cfg, BEAUTY_DS, Path(home).resolve())
    if not (ctx.home / "warehouse" / "sequences" / f"ds={BEAUTY_DS}").exists():
        runner.run(cfg, BEAUTY_DS, ctx.home, ["ingest", "validate", "split"])
    return ctx


def ensure_llm_base(ctx) -> None:
    """Run wals, embed, neighbours and train_sequential in the bench home where their outputs are missing (what
    the LLM recommender's benchmarks read and score beside it)."""
    from pipelines import runner

    missing = [s for s, t in (("wals", "item_factors"), ("embed", "text_embeddings"), ("neighbours", "neighbours"))
               if not (ctx.home / "warehouse" / t / f"ds={BEAUTY_DS}").exists()]
    if not (ctx.run_dir / "train_sequential" / "grasp" / "vectors.npz").exists():
        missing.append("train_sequential")
    if missing:
        runner.run(ctx.cfg, BEAUTY_DS, ctx.home, missing)


def every_model(key: str, value) -> list[str]:
    """``--set`` values that give ``train_sequential.KEY`` to every model: the section's and each model's
    ``per_model`` entry (where a config sets the key for one model, a section override would not reach it)."""
    from pipelines.graph import BY_NAME

    return [f"train_sequential.{key}={value}", *(f"train_sequential.per_model.{m}.{key}={value}"
                                                 for m in BY_NAME["train_sequential"].models)]


def sasrec_in_copy(ctx, data: str, epochs: int, suffix: str, launcher: list[str] | None = None,
                   sets: list[str] | None = None, env: dict | None = None) -> dict:
    """recpipe's SASRec for ``epochs`` epochs without early stopping, trained by the real ``train_sequential`` stage in a
    hard-linked copy of the bench home (``HOME-suffix``, removed afterwards) so the home's own outputs stay.

    ``launcher``: what runs ``-m pipelines.cli`` (default this Python; e.g. ``torchrun --nproc_per_node 2``).
    Returns the stage's ``result.json`` with the command and its wall time.
    """
    home2 = Path(f"{ctx.home}-{suffix}")
    shutil.rmtree(home2, ignore_errors=True)
    home2.mkdir(parents=True)
    subprocess.run(["cp", "-al", str(ctx.home / "warehouse"), str(home2 / "warehouse")], check=True)
    cmd = [*(launcher or [sys.executable]), "-m", "pipelines.cli", "stage", "train_sequential",
           "--config", "pipelines/conf/amazon_beauty.yaml", "--set", f"data.path={data}", "--home", str(home2),
           "--ds", BEAUTY_DS, *[a for kv in sets or [] for a in ("--set", kv)], "--set", "train_sequential.models=[sasrec]",
           *[a for kv in every_model("train.epochs", epochs) + every_model("train.patience", 1000)
             for a in ("--set", kv)]]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT, env=env)
    res = json.loads((home2 / "runs" / BEAUTY_DS / "train_sequential" / "sasrec" / "result.json").read_text())
    shutil.rmtree(home2, ignore_errors=True)
    return {"command": " ".join(cmd), "wall_seconds": round(time.perf_counter() - t0, 1), **res}


def commit() -> str:
    """The repository's short commit, with ``+uncommitted`` when tracked files differ from it (the results folder
    aside: a benchmark rewrites its own results files there as it goes)."""
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                            ":(exclude)tests/benchmarks/results"], cwd=ROOT, capture_output=True,
                           text=True).stdout.strip()
    return out.stdout.strip() + ("+uncommitted" if dirty else "")


def day_args(home: Path, ds: str, config: str | None, sets: list[str]) -> list[str]:
    """``--home HOME --ds DS [--config CONFIG] --set ...``: where, for which day and with what a command runs."""
    return ["--home", str(home), "--ds", ds, *(["--config", config] if config else []),
            *[a for s in sets for a in ("--set", s)]]


def recpipe(args: list[str], log: Path) -> float:
    """``python -m pipelines.cli ARGS`` from the repository root, its output appended to ``log`` after the command
    line; exits naming the command and the log if it fails. Returns its wall seconds."""
    cmd = [sys.executable, "-m", "pipelines.cli", *args]
    t0 = time.perf_counter()
    with log.open("a") as fh:
        fh.write(f"\n$ {' '.join(cmd)}\n")
        fh.flush()
        if subprocess.run(cmd, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT).returncode:
            sys.exit(f"failed: {' '.join(cmd)}; see {log}")
    return time.perf_counter() - t0


def write_results(name: str, payload: dict, rows: list[tuple], notes: list[str]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=2) + "\n")
    m = payload.get("machine", machine())
    lines = [f"# {name}", "", f"- command: `{m['command']}`",
             f"- machine: {m['cores']} cores, {m['memory_gib']} GiB, {m['platform']}, Python {m['python']}",
             f"- date: {m['date']}", ""]
    lines.append("| " + " | ".join(rows[0]) + " |")
    lines.append("|" + "---|" * len(rows[0]))
    lines += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    lines += [""] + [f"- {n}" for n in notes] + [""]
    (RESULTS / f"{name}.md").write_text("\n".join(lines))
    print(f"wrote {RESULTS / (name + '.json')}")
