"""SASRec vs SASRec + GRASP on Amazon Beauty: full ranking and 100 sampled negatives, slices, CPU time per epoch,
time to convergence, memory, and the same training with 2 processes.

    python tests/benchmarks/bench_sequential.py [--data ../shared/datasets/amazon-beauty] [--home DIR]
        [--text-source metadata|descriptions] [--compare-text-source] [--grasp-variant KEY=VALUE ...]
        [--skip-two-process]

Runs the real stages (embed and neighbours if missing, wals, train_sequential, evaluate) on the ds 2026-11-24 split and
writes ``tests/benchmarks/results/beauty_sequential.{json,md}``.

``--compare-text-source`` also trains GRASP on the other text source (``descriptions`` needs the LLM's item
descriptions: the describe stage runs for all items first, from ``HOME/cache/describe.sqlite`` where it is filled;
users are not described, so their metadata text stands in). ``--grasp-variant train_sequential.SECTION.KEY=VALUE`` trains a GRASP
variant (an ablation). Both run in a hard-linked copy of the home and are reported beside the main models; the
main comparison is the configured GRASP, chosen before these runs.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from pipelines.training.distributed import free_port  # noqa: E402
from tests.benchmarks.common import (  # noqa: E402
    BEAUTY_DS,
    RESULTS,
    machine,
    parser,
    prepare_beauty,
    sasrec_in_copy,
    write_results,
)


def two_process(ctx, data: str, source: str, epochs: int) -> dict:
    """The same SASRec training under ``torchrun --nproc_per_node 2`` in a hard-linked copy of the home."""
    launcher = [str(Path(sys.executable).with_name("torchrun")), "--nproc_per_node", "2", "--master_addr",
                "127.0.0.1", "--master_port", str(free_port())]
    return sasrec_in_copy(ctx, data, epochs, "2proc", launcher, [f"train_sequential.text_source={source}"],
                          {**os.environ, "OMP_NUM_THREADS": "1"})


def gain(a: float, b: float) -> float | None:
    return round(a / b - 1.0, 4) if b else None


def ndcg_gains(a: dict, b: dict) -> dict:
    """Relative full-ranking NDCG@10 gain of model ``a`` over ``b``, overall and per slice."""
    return {"all": gain(a["full"]["NDCG@10"], b["full"]["NDCG@10"]),
            **{sl: gain(a["slices"][sl]["full"]["NDCG@10"], b["slices"][sl]["full"]["NDCG@10"]) for sl in b["slices"]}}


def best_valid(m: dict) -> float:
    return max(h["valid_NDCG@10"] for h in m["history"])


def grasp_run(ctx, label: str, overrides: list[str]) -> dict:
    """GRASP trained with ``overrides`` and evaluated in a hard-linked copy of the home (the main home's outputs stay)."""
    from pipelines import runner
    from pipelines.config import CONF_DIR, load_config

    home = Path(f"{ctx.home}-{label}")
    for sub in ("warehouse", "runs"):
        shutil.rmtree(home / sub, ignore_errors=True)
    home.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cp", "-al", str(ctx.home / "warehouse"), str(home / "warehouse")], check=True)
    src = ctx.home / "checkpoints" / "train_sequential" / BEAUTY_DS  # an identical earlier run resumes, not retrains
    dst = home / "checkpoints" / "train_sequential" / BEAUTY_DS
    dst.mkdir(parents=True, exist_ok=True)
    for d in src.glob("*") if src.exists() else ():
        if not (dst / d.name).exists():
            subprocess.run(["cp", "-al", str(d), str(dst / d.name)], check=True)
    cfg = load_config(CONF_DIR / "amazon_beauty.yaml", [f"data.path={ctx.cfg.data.path}", *overrides,
                                                         "train_sequential.models=[grasp]"])
    runner.run(cfg, BEAUTY_DS, home, ["train_sequential", "evaluate"])
    m = json.loads((home / "runs" / BEAUTY_DS / "metrics.json").read_text())["grasp"]
    r = json.loads((home / "runs" / BEAUTY_DS / "train_sequential" / "grasp" / "result.json").read_text())
    return {"overrides": overrides, **{k: m[k] for k in ("full", "sampled100", "slices", "valid")},
            **{k: r[k] for k in ("epoch_seconds", "best_epoch", "epochs_run", "best_valid_NDCG@10", "history")}}


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__, shared=("data", "home"))
    ap.add_argument("--text-source", default="metadata", choices=["metadata", "descriptions"])
    ap.add_argument("--skip-two-process", action="store_true")
    ap.add_argument("--fresh", action="store_true", help="delete this ds's checkpoints first (else finished or "
                    "interrupted trainings with identical settings and data are resumed)")
    ap.add_argument("--two-process-epochs", type=int, default=3)
    ap.add_argument("--compare-text-source", action="store_true")
    ap.add_argument("--grasp-variant", action="append", default=[], metavar="train_sequential.SECTION.KEY=VALUE")
    args = ap.parse_args(argv)
    other = "descriptions" if args.text_source == "metadata" else "metadata"
    ctx = prepare(args, [args.text_source] + ([other] if args.compare_text_source else []))
    if args.fresh:
        shutil.rmtree(ctx.home / "checkpoints" / "train_sequential" / BEAUTY_DS, ignore_errors=True)
    out, summary, wall = train_and_score(ctx)
    s, g = out["sasrec"], out["grasp"]
    comparison = {"grasp_vs_sasrec_NDCG@10": ndcg_gains(g, s)}
    if (tp := two_process_comparison(ctx, args, s)) is not None:
        comparison["two_process"] = tp
    variants = grasp_variants(ctx, args, other)
    for label, v in variants.items():
        comparison[f"{label}_vs_sasrec_NDCG@10"] = ndcg_gains(v, s)
    if args.compare_text_source:
        ds_, md = (variants[f"grasp[{other}]"], g) if other == "descriptions" else (g, variants[f"grasp[{other}]"])
        comparison["descriptions_vs_metadata_NDCG@10"] = {
            **ndcg_gains(ds_, md), "valid": gain(best_valid(ds_), best_valid(md))}  # at each model's best epoch
    payload = {**out, **variants, "_comparison": comparison,
               "_meta": {"dataset": "amazon-beauty", "ds": BEAUTY_DS, "seed": ctx.cfg.seed,
                         "protocol": "leave-one-out; full ranking over all items (history excluded) and 100 sampled "
                                     "negatives (seed %d); test phase reads train + valid" % ctx.cfg.eval.negatives_seed,
                         "text_source": args.text_source,
                         "train_sequential": dataclasses.asdict(ctx.cfg.train_sequential),
                         "stage_seconds": {k: v["seconds"] for k, v in summary["stages"].items()},
                         "wall_seconds": round(wall, 1), "machine": machine()}}
    write_results("beauty_sequential", {**payload, "machine": machine()}, *report(payload, out, variants, args))
    return 0


def prepare(args: argparse.Namespace, sources: list[str]):
    """The bench home with the day split and, for every text source, its embeddings and neighbours (the LLM's item
    descriptions first where ``descriptions`` is one); returns its StageContext."""
    from jobs import warehouse
    from pipelines import runner

    overrides = [f"train_sequential.text_source={args.text_source}", f"embed.sources=[{','.join(sources)}]",
                 "describe.entities=[items]"]
    ctx = prepare_beauty(args.data, args.home, overrides)
    if "descriptions" in sources and not warehouse.partition_path(ctx.home, "descriptions", BEAUTY_DS).exists():
        runner.run(ctx.cfg, BEAUTY_DS, ctx.home, ["describe"])
    have = [warehouse.partition_path(ctx.home, t, BEAUTY_DS).exists() for t in ("text_embeddings", "neighbours")]
    emb = warehouse.read_arrow(ctx.home, "text_embeddings", BEAUTY_DS, columns=["source"]) if have[0] else None
    if emb is None or not set(sources) <= set(emb.column("source").to_pylist()) or not have[1]:
        runner.run(ctx.cfg, BEAUTY_DS, ctx.home, ["embed", "neighbours"])
    return ctx


def train_and_score(ctx) -> tuple[dict, dict, float]:
    """wals, train_sequential and evaluate in the bench home: every model's figures (and its training record's),
    the run's summary and its wall seconds."""
    from pipelines import runner

    t0 = time.perf_counter()
    summary = runner.run(ctx.cfg, BEAUTY_DS, ctx.home, ["wals", "train_sequential", "evaluate"])
    wall = time.perf_counter() - t0
    metrics = json.loads((ctx.run_dir / "metrics.json").read_text())
    out: dict = {}
    for model, m in metrics.items():
        out[model] = {k: m[k] for k in ("full", "sampled100", "slices", "valid")}
        rp = ctx.run_dir / "train_sequential" / model / "result.json"
        if rp.exists():
            r = json.loads(rp.read_text())
            out[model].update({k: r[k] for k in ("epoch_seconds", "best_epoch", "epochs_run", "seconds_to_best",
                                                 "train_seconds", "peak_rss_mb", "parameters", "history")})
            out[model]["text_source"] = r.get("text_source")
    return out, summary, wall


def two_process_comparison(ctx, args: argparse.Namespace, sasrec: dict) -> dict | None:
    """SASRec's first epochs under 2 processes against 1; with ``--skip-two-process`` the last measured one, marked
    as carried over (None when there is none)."""
    if not args.skip_two_process:
        tp = two_process(ctx, args.data, args.text_source, args.two_process_epochs)
        one = sasrec["history"][: args.two_process_epochs]
        return {"epochs": args.two_process_epochs, "epoch_seconds_2proc": tp["epoch_seconds"],
                "epoch_seconds_1proc": round(sum(h["seconds"] for h in one) / len(one), 3),
                "valid_NDCG@10_2proc": [h["valid_NDCG@10"] for h in tp["history"]],
                "valid_NDCG@10_1proc": [h["valid_NDCG@10"] for h in one],
                "peak_rss_mb_per_process": tp["peak_rss_mb"], "command": tp["command"]}
    prev = RESULTS / "beauty_sequential.json"
    old = json.loads(prev.read_text()).get("_comparison", {}).get("two_process") if prev.exists() else None
    if not old:
        return None
    return {**old, "carried_over_from": old.get("carried_over_from")
            or json.loads(prev.read_text())["_meta"]["machine"]["date"]}


def grasp_variants(ctx, args: argparse.Namespace, other: str) -> dict:
    """GRASP on the other text source (``--compare-text-source``) and each ``--grasp-variant``."""
    variants = {}
    if args.compare_text_source:
        variants[f"grasp[{other}]"] = grasp_run(ctx, other, [f"train_sequential.text_source={other}"])
    for v in args.grasp_variant:
        key = v if v.startswith("train_sequential.") else f"train_sequential.{v}"
        variants[f"grasp[{key.split('.', 1)[1]}]"] = grasp_run(
            ctx, key.split(".", 1)[1].replace("=", "-"), [f"train_sequential.text_source={args.text_source}", key])
    return variants


def report(payload: dict, out: dict, variants: dict, args: argparse.Namespace) -> tuple[list[tuple], list[str]]:
    """The table and notes of results/beauty_sequential.md."""
    comparison = payload["_comparison"]
    rows = [("model", "full NDCG@10", "full HR@10", "sampled100 NDCG@10", "short-history NDCG@10",
             "tail-items NDCG@10", "s/epoch", "epochs (best)")]
    for model, m in {**out, **variants}.items():
        rows.append((model, f"{m['full']['NDCG@10']:.4f}", f"{m['full']['HR@10']:.4f}",
                     f"{m['sampled100']['NDCG@10']:.4f}", f"{m['slices']['short_history']['full']['NDCG@10']:.4f}",
                     f"{m['slices']['tail_items']['full']['NDCG@10']:.4f}", str(m.get("epoch_seconds", "-")),
                     f"{m['epochs_run']} ({m['best_epoch']})" if "epochs_run" in m else "-"))
    notes = [f"GRASP vs SASRec, NDCG@10 relative gain: {comparison['grasp_vs_sasrec_NDCG@10']}",
             f"GRASP text source: {args.text_source}", f"seed {payload['_meta']['seed']}; {payload['_meta']['protocol']}"]
    for k, v in comparison.items():
        if k.startswith("grasp[") or k.startswith("descriptions_vs"):
            notes.append(f"{k}: {v}")
    if variants:
        notes.append("valid NDCG@10 at the best epoch: " + ", ".join(
            f"{k} {best_valid(v):.4f}" for k, v in {**out, **variants}.items()
            if "history" in v))
    if "two_process" in comparison:
        notes.append(f"2 processes (torchrun, OMP_NUM_THREADS=1): {comparison['two_process']}")
    return rows, notes


if __name__ == "__main__":
    raise SystemExit(main())
