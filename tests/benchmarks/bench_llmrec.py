"""The LLM recommender on Amazon Beauty, CPU: a fixed seeded subset of test users, full ranking over all items, and
popularity, WALS, SASRec and GRASP scored on exactly the same users in the same run.

    python tests/benchmarks/bench_llmrec.py [--data ../shared/datasets/amazon-beauty] [--home DIR] [--users 1000]
        [--only NAME ...] [--set KEY=VALUE ...] [--evaluate-only]

Runs the real stages with ``amazon_beauty.yaml`` (its CPU budget for ``llmrec``) and metadata text: wals, embed,
neighbours and train_sequential if missing in HOME, then for every llmrec variant ``train_llmrec`` + ``evaluate``
(``eval.users=N``, so every model is scored on the same N test users) in a hard-linked copy of HOME that also links
the checkpoints of the variants before it (``llmrec_stage1`` reuses stage 1 of ``llmrec_stage2``). Writes
``tests/benchmarks/results/llmrec_beauty.{json,md}``. ``--evaluate-only`` re-runs only ``evaluate`` in the variant
homes of an earlier run (the trained models and their training records stay).

Variants: ``llmrec_stage2`` (the configured model), ``llmrec_stage1`` (no LoRA stage), ``llmrec_titles_only`` (no
soft tokens), ``llmrec_no_titles``, ``llmrec_no_align`` (alignment weight 0), and ``llmrec_cascade_grasp`` (the
configured model re-ranking GRASP's top 50, from the first variant's evaluate).
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.benchmarks.common import (  # noqa: E402
    BEAUTY_DS,
    ROOT,
    ensure_llm_base,
    machine,
    parser,
    prepare_beauty,
    write_results,
)

BASE = ["embed.sources=[metadata]", "train_sequential.text_source=metadata", "llmrec.text_source=metadata"]
VARIANTS = {
    "llmrec_stage2": [],
    "llmrec_stage1": ["llmrec.lora=false"],
    "llmrec_titles_only": ["llmrec.soft_tokens=false"],
    "llmrec_no_titles": ["llmrec.titles=false"],
    "llmrec_no_align": ["llmrec.align_weight=0"],
}
BASELINES = ("popularity", "wals", "sasrec", "grasp")


def row(m: dict) -> dict:
    return {"HR@10": m["full"]["HR@10"], "NDCG@10": m["full"]["NDCG@10"], "users": m["full"]["users"],
            "short_history_NDCG@10": m["slices"]["short_history"]["full"]["NDCG@10"],
            "tail_items_NDCG@10": m["slices"]["tail_items"]["full"]["NDCG@10"],
            "valid_NDCG@10": m["valid"]["full"]["NDCG@10"]}


def variant_home(home: Path, name: str) -> Path:
    """A copy of ``home`` for one variant: warehouse hard-linked, and the llmrec checkpoints of earlier variants."""
    dst = Path(f"{home}-{name}")
    subprocess.run(["rm", "-rf", str(dst)], check=True)
    dst.mkdir(parents=True)
    for part in ("warehouse", "scratch", "models", "checkpoints", f"runs/{BEAUTY_DS}/train_sequential"):
        if (home / part).exists():
            (dst / part).parent.mkdir(parents=True, exist_ok=True)
            subprocess.run(["cp", "-al", str(home / part), str(dst / part)], check=True)
    return dst


def run_variant(data: str, home: Path, name: str, sets: list[str], stages: str = "train_llmrec,evaluate") -> dict:
    cmd = [sys.executable, "-m", "pipelines.cli", "run", "--stages", stages, "--config",
           "pipelines/conf/amazon_beauty.yaml", "--ds", BEAUTY_DS, "--home", str(home),
           *[a for kv in [f"data.path={data}", *sets] for a in ("--set", kv)]]
    print(f"== {name}: {' '.join(cmd)}", flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT)
    wall = time.perf_counter() - t0
    run = home / "runs" / BEAUTY_DS
    summary = json.loads((run / "summary.json").read_text())
    st = summary["stages"]["train_llmrec"]
    stages = st["stages"]
    wall = summary["stages"]["train_llmrec"]["seconds"] + summary["stages"]["evaluate"]["seconds"]
    return {"command": " ".join(cmd), "wall_seconds": round(wall, 1), "metrics": json.loads((run / "metrics.json")
                                                                                              .read_text()),
            "train": {s: {k: r[k] for k in ("examples_per_s", "epochs_run", "best_epoch", "best_valid_NDCG@10",
                                            "train_seconds", "peak_rss_mb")} for s, r in stages.items()},
            "train_examples": st["train_examples"], "reasons": st.get("reasons"), "stage_seconds": st["seconds"]}


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__, shared=("data", "home", "set"))
    ap.add_argument("--users", type=int, default=1000)
    ap.add_argument("--only", action="append", default=[], help="run only these variants (repeatable)")
    ap.add_argument("--out", default="llmrec_beauty")
    ap.add_argument("--evaluate-only", action="store_true", help="re-run only evaluate in existing variant homes")
    args = ap.parse_args(argv)
    sets = [*BASE, f"eval.users={args.users}", *args.sets]
    ctx = prepare_beauty(args.data, args.home, sets)
    ensure_llm_base(ctx)
    runs, models = {}, {}
    for name, extra in VARIANTS.items():
        if args.only and name not in args.only:
            continue
        if args.evaluate_only:
            home = Path(f"{ctx.home}-{name}")
            runs[name] = run_variant(args.data, home, name, [*sets, *extra], "evaluate")
        else:
            home = variant_home(ctx.home, name)
            runs[name] = run_variant(args.data, home, name, [*sets, *extra])
        m = runs[name]["metrics"]
        train = runs[name]["train"]
        models[name] = {**row(m["llmrec"]), "examples_per_s": train.get("stage2", train["stage1"])["examples_per_s"],
                        "peak_rss_mb": max(r["peak_rss_mb"] for r in train.values()),
                        "wall_seconds": runs[name]["wall_seconds"]}
        if not any(b in models for b in BASELINES):
            models.update({b: row(m[b]) for b in BASELINES})
            if "llmrec_cascade_grasp" in m:
                models["llmrec_cascade_grasp"] = {**row(m["llmrec_cascade_grasp"]),
                                                  **m["llmrec_cascade_grasp"].get("notes", {})}
        subprocess.run(["cp", "-al", str(home / "checkpoints"), str(ctx.home)], check=False)  # later variants reuse
    payload = {"subset_users": args.users, "models": models, "runs": runs,
               "_meta": {"dataset": "amazon-beauty", "ds": BEAUTY_DS, "seed": ctx.cfg.seed,
                         "protocol": "leave-one-out, test phase, full ranking over all items with each user's "
                                     "train + valid items excluded; the same seeded subset of test users "
                                     f"(eval.users={args.users}, eval.users_seed={ctx.cfg.eval.users_seed}) for every "
                                     "model; valid NDCG@10 on the same users",
                         "settings": "pipelines/conf/amazon_beauty.yaml with " + " ".join(sets),
                         "chosen_on": "llmrec's epochs by early stopping on valid NDCG@10 (500 seeded valid users); "
                                      "its other settings are the config's, not chosen on test"},
               "machine": machine()}
    write_results(args.out, payload, *report(payload))
    return 0


def report(payload: dict) -> tuple[list[tuple], list[str]]:
    """The table and notes of results/llmrec_beauty.md (``--out``), from the payload alone."""
    models, meta = payload["models"], payload["_meta"]
    order = [*BASELINES, *VARIANTS, "llmrec_cascade_grasp"]
    rows = [("model", "HR@10", "NDCG@10", "short-history NDCG@10", "tail-item NDCG@10", "valid NDCG@10",
             "train examples/s", "peak RSS MB", "wall s")]
    for name in [n for n in order if n in models]:
        r = models[name]
        rows.append((name, f"{r['HR@10']:.4f}", f"{r['NDCG@10']:.4f}", f"{r['short_history_NDCG@10']:.4f}",
                     f"{r['tail_items_NDCG@10']:.4f}", f"{r['valid_NDCG@10']:.4f}", str(r.get("examples_per_s", "-")),
                     str(r.get("peak_rss_mb", "-")), str(r.get("wall_seconds", "-"))))
    notes = [f"Amazon Beauty, ds {BEAUTY_DS}, seed {meta['seed']}; {meta['protocol']}.",
             f"settings: {meta['settings']}; {meta['chosen_on']}.",
             "wall s: the train_llmrec and evaluate stages of the variant (loading, both stages, scoring, reasons).",
             "llmrec_cascade_grasp: llmrec_stage2 re-ranking GRASP's top 50 (llmrec.rerank_from=grasp, rerank_k=50), "
             "mixing the two models' standardised scores within them with the weight chosen on valid: "
             + json.dumps({k: models.get("llmrec_cascade_grasp", {}).get(k) for k in ("rerank_mix",
                                                                                    "valid_NDCG@10_by_mix")})]
    return rows, notes


if __name__ == "__main__":
    sys.exit(main())
