"""Benchmark (issue 42): every stage on the Beauty-shaped synthetic shop at 1x, 3x and 10x Beauty's interactions,
how its cost grows, and what full CE costs against the sampled softmax.

    python tests/benchmarks/bench_scale.py [--scales 1,3,10] [--home /tmp/recpipe-bench-scale] [--compare-ce 10]

Per scale ``S``: a home ``HOME-S`` with ``synthetic.scale=S`` (``features.synthetic.scaled``: S x Beauty's 22,363
users, 12,101 items, ~198,000 interactions), the generic config (``pipelines/conf/synthetic.yaml``) with the caps
below, and each stage of ``STAGES`` run alone (``recpipe stage``, in DAG order) in its own process: wall seconds,
peak RSS (the stage's process and its descendants, its Spark JVM included, summed, sampled every 0.2 s) and the rows it wrote. Then per
stage the log-log slope of seconds against interactions (least squares over the scales: 1 = linear) and, per scale,
the stage that dominates.

Caps, the same at every scale so the slopes compare like with like: ``describe`` writes ``DESCRIBE_CAP`` items and
users (its figures are also given per entity: the LLM's cost is per entity, ``results/engines.md``); sequential
training runs ``EPOCHS`` epoch (seconds per epoch) with ``loss: sampled`` (the scalable loss); the LLM recommender
and its web stages are left out (their cost is per user scored and is measured in ``results/llmrec_beauty.md``).
``--compare-ce S``: at scale S, ``train_sequential`` once more with full CE (``loss: ce``) for its time and peak
memory beside the sampled softmax's, in a copy of the home; a run that fails (out of memory) is recorded as such.

Writes ``results/scale.{json,md}``: ``{"scales": [...], "interactions": [...], "stages": {STAGE: {"seconds",
"peak_rss_mb", "rows", "slope"}}, "dominant": [...], "full_ce": {...}}``.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.benchmarks.common import ROOT, day_args, machine, parser, write_results  # noqa: E402

DS = "2026-11-24"
STAGES = ("ingest", "validate", "split", "wals", "describe", "embed", "neighbours", "train_sequential", "evaluate")
DESCRIBE_CAP, EPOCHS = 64, 1
CAPS = [f"describe.max_items={DESCRIBE_CAP}", f"describe.max_users={DESCRIBE_CAP}",
        f"train_sequential.train.epochs={EPOCHS}", "train_sequential.train.patience=1000",
        "train_sequential.loss=sampled", "llmrec.retrieval=none"]


def run_stage(home: Path, stage: str, config: str | None, sets: list[str], log: Path) -> dict:
    """``recpipe stage STAGE`` in its own process: wall seconds, peak RSS (MB) and its record's rows, or the
    failure (its exit status and the last lines of its output)."""
    cmd = [sys.executable, "-m", "pipelines.cli", "stage", stage, *day_args(home, DS, config, sets)]
    with log.open("a") as fh:
        fh.write(f"\n$ {' '.join(cmd)}\n")
        fh.flush()
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT)
        peak = tree_peak_rss(proc)
        seconds = time.perf_counter() - t0
    out = {"seconds": round(seconds, 2), "peak_rss_mb": round(peak / 2**20, 1)}
    if proc.returncode:
        tail = log.read_text().splitlines()[-5:]
        return out | {"failed": f"exit {proc.returncode}: {' / '.join(tail)}"}
    record = json.loads((home / "runs" / DS / "stages" / f"{stage}.json").read_text())
    return out | {"rows": record.get("rows_out")}


def tree_peak_rss(proc: subprocess.Popen, every: float = 0.2) -> int:
    """Wait for ``proc``; the largest summed RSS (bytes) of it and all its descendants (a Spark JVM, DataLoader
    workers), sampled every ``every`` seconds."""
    root, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        try:
            peak = max(peak, sum(p.memory_info().rss for p in [root, *root.children(recursive=True)]))
        except psutil.Error:  # a process ended between listing and reading
            pass
        time.sleep(every)
    return peak


def one_scale(args, scale: float) -> dict:
    """Every stage at ``scale`` in a fresh home; ``{stage: figures}`` and the interactions."""
    home = Path(f"{args.home}-{scale:g}")
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    sets, log = [f"synthetic.scale={scale}", *CAPS, *args.sets], home / "bench_scale.log"
    figures = {}
    for stage in STAGES:
        figures[stage] = run_stage(home, stage, args.config, sets, log)
        print(f"scale {scale:g} {stage}: {figures[stage]}", flush=True)
        if "failed" in figures[stage]:
            break
    inter = json.loads((home / "runs" / DS / "stages" / "ingest.json").read_text())["tables"]["interactions"]
    return {"home": str(home), "interactions": inter, "stages": figures, "sets": sets}


def full_ce(args, run: dict) -> dict:
    """``train_sequential`` with full CE in a copy of ``run``'s home, beside the sampled softmax's figures."""
    if "rows" not in run["stages"].get("train_sequential", {}):
        sys.exit(f"--compare-ce: the sampled softmax's train_sequential did not finish in {run['home']}")
    home = Path(run["home"] + "-ce")
    shutil.rmtree(home, ignore_errors=True)
    shutil.copytree(run["home"], home, ignore=shutil.ignore_patterns("checkpoints"))
    ce = run_stage(home, "train_sequential", args.config, [*run["sets"], "train_sequential.loss=ce"],
                   home / "bench_scale.log")
    shutil.rmtree(home, ignore_errors=True)
    return {"sampled": run["stages"]["train_sequential"], "ce": ce}


def slope(x: list[float], y: list[float]) -> float | None:
    """Least-squares slope of log y on log x (None with fewer than two points)."""
    if len(x) < 2 or min(y) <= 0:
        return None
    return round(float(np.polyfit(np.log(x), np.log(y), 1)[0]), 3)


def summarise(runs: dict[float, dict], ce: dict | None, config: str | None) -> dict:
    scales = sorted(runs)
    inter = [runs[s]["interactions"] for s in scales]
    stages = {}
    for st in STAGES:
        done = [s for s in scales if "rows" in runs[s]["stages"].get(st, {})]
        f = {k: [runs[s]["stages"][st].get(k) for s in scales] for k in ("seconds", "peak_rss_mb", "rows")}
        f["slope"] = slope([runs[s]["interactions"] for s in done], [runs[s]["stages"][st]["seconds"] for s in done])
        f["failed"] = {f"{s:g}": runs[s]["stages"][st]["failed"] for s in scales if "failed" in runs[s]["stages"].get(st, {})}
        stages[st] = f
    stages["describe"]["seconds_per_entity"] = [round(x / (2 * DESCRIBE_CAP), 3) if x else None
                                                for x in stages["describe"]["seconds"]]
    dominant = [max((st for st in STAGES if stages[st]["seconds"][i]), key=lambda st: stages[st]["seconds"][i])
                for i in range(len(scales))]
    return {"scales": [float(s) for s in scales], "interactions": inter, "stages": stages, "dominant": dominant,
            "full_ce": ce, "caps": CAPS, "ds": DS, "config": config or "pipelines/conf/synthetic.yaml (the default)",
            "machine": machine()}


def report(p: dict) -> tuple[list[tuple], list[str]]:
    head = ("stage", *[f"{s:g}x s" for s in p["scales"]], *[f"{s:g}x peak MB" for s in p["scales"]], "slope")
    rows = [head]
    for st, f in p["stages"].items():
        rows.append((st, *[f"{x:.1f}" if x is not None else "-" for x in f["seconds"]],
                     *[f"{x:.0f}" if x is not None else "-" for x in f["peak_rss_mb"]],
                     f"{f['slope']:.2f}" if f["slope"] is not None else "-"))
    notes = [f"interactions: {', '.join(f'{n:,}' for n in p['interactions'])} (scales {', '.join(f'{s:g}' for s in p['scales'])}: "
             "features.synthetic.scaled, Beauty-shaped)",
             f"slope: least squares of log seconds on log interactions (1 = linear); dominant stage per scale: "
             f"{', '.join(p['dominant'])}",
             f"caps at every scale: {', '.join(p['caps'])}; describe per entity: {p['stages']['describe']['seconds_per_entity']} s",
             "peak MB: the stage's process and all its descendants (its Spark JVM included), summed, sampled every "
             "0.2 s"]
    notes += [f"{st} failed at {s}x: {why}" for st, f in p["stages"].items() for s, why in f["failed"].items()]
    if p["full_ce"]:
        c = p["full_ce"]
        notes.append(f"train_sequential at {c['scale']:g}x, one epoch: sampled softmax {c['sampled']['seconds']} s, "
                     f"{c['sampled']['peak_rss_mb']} MB; full CE "
                     + (f"failed ({c['ce']['failed']})" if "failed" in c["ce"] else
                        f"{c['ce']['seconds']} s, {c['ce']['peak_rss_mb']} MB"))
    return rows, notes


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__, home="/tmp/recpipe-bench-scale")
    p.add_argument("--scales", default="1,3,10", help="comma-separated multiples of Beauty")
    p.add_argument("--compare-ce", type=float, default=0.0, help="at this scale, also train with full CE (0: no)")
    args = p.parse_args(argv)
    runs = {float(s): one_scale(args, float(s)) for s in args.scales.split(",")}
    ce = None
    if args.compare_ce:
        if args.compare_ce not in runs:
            sys.exit(f"--compare-ce {args.compare_ce:g} is not one of --scales {args.scales}")
        ce = {"scale": args.compare_ce, **full_ce(args, runs[args.compare_ce])}
    payload = summarise(runs, ce, args.config)
    write_results(f"scale{args.suffix}", payload, *report(payload))
    return 0


if __name__ == "__main__":
    sys.exit(main())
