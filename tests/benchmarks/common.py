"""The benchmarks' harness: shared arguments, the variant table runner, paired intervals over seeds, the results
writer; and shared helpers (data preparation, the machine's description, the commit, running ``recpipe``).

* ``parser(doc, **defaults)``: ``--config``, ``--set`` (repeatable, ``args.sets``), ``--home``, ``--seeds`` (a comma
  list, ``args.seeds``: ``list[int]``), ``--suffix``, ``--skip-prepare``, and on request ``--data`` (the Beauty folder).
* ``run_variants(seeds, table, labels, run, reference)``: every (seed, variant) through ``run``, in the table's order
  (the reference first) whatever the order of ``labels`` (``variant_order``); returns ``{label: [result per seed]}``.
* ``paired_interval(model, reference)``: per-seed paired deltas, their mean and the harness's interval (``INTERVALS``:
  a t-interval over the per-seed deltas by default, or a two-level bootstrap over seeds then users;
  ``pipelines/evaluation/stats.py`` says why), with the verdict; ``interval_record`` is the payload's ``interval``.
* ``write_results(name, payload, rows, notes)``: ``results/<name>.json`` (the payload, plus ``report``: the .md's
  table and notes, and ``meta``: dataset, protocol, seeds, command, commit, date, machine; what
  ``results_doc.py`` renders docs/results.md from) and ``results/<name>.md``.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
RESULTS = Path(__file__).resolve().parent / "results"
BEAUTY_DS = "2026-11-24"
BEAUTY_DATA = ROOT.parent / "shared" / "datasets" / "amazon-beauty"
T = TypeVar("T")

# ----------------------------------------------------------------------------- arguments

SHARED = ("config", "set", "home", "seeds", "suffix", "skip_prepare")
_ARGUMENTS = {  # name: (flag, argparse keywords); the default of each is overridable by parser(**defaults)
    "config": ("--config", {"default": None, "help": "the config file (default: the embedded synthetic one)"}),
    "set": ("--set", {"dest": "sets", "action": "append", "default": [], "metavar": "KEY=VALUE",
                      "help": "a config override (repeatable)"}),
    "home": ("--home", {"default": "/tmp/recpipe-bench-beauty", "help": "the benchmark's RECPIPE_HOME"}),
    "seeds": ("--seeds", {"default": "42,43,44", "help": "training seeds, comma-separated (seed i of every variant is "
                          "paired with seed i of the reference)"}),
    "suffix": ("--suffix", {"default": "", "help": "results/<name><suffix>.{json,md}"}),
    "skip_prepare": ("--skip-prepare", {"action": "store_true", "default": False, "help": "the day's upstream stages already ran in "
                                                                        "--home"}),
    "data": ("--data", {"default": str(BEAUTY_DATA), "help": "the Amazon Beauty folder"}),
}


def seed_list(text: str) -> list[int]:
    """``"42,43,44"`` -> ``[42, 43, 44]`` (distinct integers, at least one)."""
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"comma-separated integers expected, got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"one or more distinct seeds expected, got {text!r}")
    return seeds


def parser(doc: str, *, shared: Iterable[str] = SHARED, **defaults) -> argparse.ArgumentParser:
    """An argument parser described by ``doc``'s first line with the shared arguments named in ``shared`` (any of
    ``SHARED`` and ``"data"``; ``args.sets`` holds ``--set``, ``args.seeds`` a ``list[int]``); ``defaults``: the
    default of a shared argument (by its name: ``home="/tmp/x"``, ``seeds="42"``)."""
    shared = list(shared)
    if unknown := [n for n in [*shared, *defaults] if n not in _ARGUMENTS]:
        raise TypeError(f"not a shared argument: {unknown}; known: {', '.join(_ARGUMENTS)}")
    if missing := [n for n in defaults if n not in shared]:
        raise TypeError(f"defaults for arguments not asked for: {missing}")
    p = argparse.ArgumentParser(description=doc.strip().splitlines()[0])
    for name in shared:
        flag, kw = _ARGUMENTS[name]
        kw = {**kw, "default": defaults.get(name, kw["default"])}
        p.add_argument(flag, **kw, **({"type": seed_list} if name == "seeds" else {}))
    return p


# ----------------------------------------------------------------------------- variants and intervals

def variant_order(table: Mapping[str, object], labels: Iterable[str], reference: str | None = None) -> list[str]:
    """``labels`` in the table's order, ``reference`` first, whatever order they came in; exits naming the table's
    labels when one is unknown or the reference is missing."""
    chosen = list(dict.fromkeys(labels))
    unknown = [v for v in chosen if v not in table]
    if unknown or (reference is not None and reference not in chosen):
        sys.exit(f"variants: {unknown or f'{reference} is required (the reference)'}; known: {', '.join(table)}")
    order = [v for v in table if v in chosen]
    return [reference, *[v for v in order if v != reference]] if reference is not None else order


def run_variants(seeds: Sequence[int], table: Mapping[str, T], labels: Iterable[str],
                 run: Callable[[int, str, T], object], reference: str | None = None) -> dict[str, list]:
    """``run(seed, label, table[label])`` for every seed (in the given order) and every label in
    ``variant_order(table, labels, reference)``; returns ``{label: [result per seed]}`` in that order, so nothing
    computed from it depends on the order the labels were given in."""
    order = variant_order(table, labels, reference)
    out: dict[str, list] = {v: [] for v in order}
    for seed in seeds:
        for label in order:
            out[label].append(run(seed, label, table[label]))
    return out


INTERVALS = {"t": "t over per-seed paired deltas", "two-level": "two-level bootstrap (seeds, then users)"}


def verdict(ci: Sequence[float]) -> str:
    return "better" if ci[0] > 0 else "worse" if ci[1] < 0 else "not distinguishable"


def paired_interval(model: Sequence[float], reference: Sequence[float], method: str = "t", level: float = 0.95,
                    user_diffs: list[np.ndarray] | None = None, resamples: int = 2000, seed: int = 0) -> dict:
    """A model's delta to the reference over seeds from per-seed figures (``model[i]`` and ``reference[i]``: seed
    i's figure of each, over the same users): ``per_seed_deltas``, ``delta`` (their mean), ``ci95`` (``method``:
    ``"t"``, the harness's default, or ``"two-level"``, which needs ``user_diffs``, the per-user differences of
    every seed pair), ``method`` (its name in ``INTERVALS``) and ``verdict``."""
    deltas = [float(a) - float(b) for a, b in zip(model, reference, strict=True)]
    return _interval(deltas, method, level, user_diffs, resamples, seed)


def paired_interval_from_deltas(user_diffs: list[np.ndarray], method: str = "t", level: float = 0.95,
                                resamples: int = 2000, seed: int = 0) -> dict:
    """``paired_interval`` from the per-user differences of every seed pair (one array per pair, e.g.
    ``paired_difference(..., per_seed=True)``): seed i's delta is the mean of its array."""
    return _interval([float(np.mean(d)) for d in user_diffs], method, level, user_diffs, resamples, seed)


def _interval(deltas: list[float], method: str, level: float, user_diffs: list[np.ndarray] | None,
              resamples: int, seed: int) -> dict:
    from pipelines.evaluation.stats import seed_t_interval, two_level_bootstrap

    if method == "t":
        ci = seed_t_interval(deltas, level)
    elif method == "two-level":
        if user_diffs is None:
            raise ValueError("the two-level bootstrap needs the per-user differences of every seed pair")
        ci = two_level_bootstrap(user_diffs, resamples, seed, level)
    else:
        raise ValueError(f"interval method {method!r}: one of {', '.join(INTERVALS)}")
    return {"delta": float(np.mean(deltas)), "per_seed_deltas": deltas, "ci95": [float(ci[0]), float(ci[1])],
            "method": INTERVALS[method], "verdict": verdict(ci)}


def interval_record(method: str = "t", level: float = 0.95, resamples: int | None = None,
                    reference: str = "the reference") -> dict:
    """The payload's ``interval``: which interval the deltas carry, and over what."""
    rec = {"method": INTERVALS[method], "level": level,
           "deltas": f"seed i of each model minus seed i of {reference}, each over the same users"}
    if method == "two-level":
        rec["resamples"] = resamples
    return rec


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


def describe_machine(m: dict) -> str:
    """``machine()`` (or a results file's ``machine``) in words."""
    words = f"{m.get('cores')} cores, {m.get('memory_gib')} GiB, {m.get('platform')}, Python {m.get('python')}"
    return words + (f", GPU {m['gpu']}" if m.get("gpu") else "")


def results_meta(payload: dict, meta: dict | None = None) -> dict:
    """A results file's ``meta``: what the payload says (top level, else its ``_meta``; the command and date of
    its ``machine``) and the commit now, then ``meta``'s entries over them; ``None`` where not known."""
    inner = payload.get("_meta") if isinstance(payload.get("_meta"), dict) else {}
    m = payload.get("machine") or inner.get("machine") or {}
    seed = payload.get("seed", inner.get("seed"))
    out = {"dataset": payload.get("dataset", inner.get("dataset")),
           "protocol": payload.get("protocol", inner.get("protocol")),
           "seeds": payload.get("seeds") or ([seed] if seed is not None else None),
           "command": m.get("command"), "commit": commit(), "date": m.get("date"),
           "machine": describe_machine(m) if m else None}
    return out | (meta or {})


def write_results(name: str, payload: dict, rows: list[tuple], notes: list[str], meta: dict | None = None,
                  tail: list[str] | None = None) -> None:
    """``results/<name>.json`` (``payload`` with ``report``: ``columns``, ``rows`` and ``notes`` of the .md, and
    ``meta``: ``results_meta(payload, meta)``) and ``results/<name>.md`` (the machine, the table, the notes, then
    ``tail``'s lines)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    report = {"columns": list(rows[0]), "rows": [list(r) for r in rows[1:]], "notes": list(notes)}
    full = {**{k: v for k, v in payload.items() if k not in ("report", "meta")}, "report": report,
            "meta": results_meta(payload, meta)}  # report and meta last, a re-rendered file's included
    (RESULTS / f"{name}.json").write_text(json.dumps(full, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    m = payload.get("machine", machine())
    lines = [f"# {name}", "", f"- command: `{m['command']}`",
             f"- machine: {m['cores']} cores, {m['memory_gib']} GiB, {m['platform']}, Python {m['python']}",
             f"- date: {m['date']}", ""]
    lines.append("| " + " | ".join(rows[0]) + " |")
    lines.append("|" + "---|" * len(rows[0]))
    lines += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    lines += [""] + [f"- {n}" for n in notes] + [""] + list(tail or [])
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + ("\n" if tail else ""), encoding="utf-8")
    print(f"wrote {RESULTS / (name + '.json')}")
