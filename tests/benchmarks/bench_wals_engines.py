"""Benchmark: WALS on both engines (implicit vs Spark ML ALS) on Amazon Beauty, identical hyperparameters.

Same run, same split, same hyperparameters (those in pipelines/conf/amazon_beauty.yaml unless --set),
fit on train + valid, scored on test by full ranking (and 100 sampled negatives) with the shared evaluation.
Also times full-ranking evaluation of every user and the popularity baseline.

    .venv/bin/python tests/benchmarks/bench_wals_engines.py [--data ../shared/datasets/amazon-beauty] [--set k=v ...]

Writes tests/benchmarks/results/wals_engines.json and wals_engines.md.
"""
from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.benchmarks.common import machine, parser, prepare_beauty, write_results  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    args = parser(__doc__, shared=("data", "home", "set")).parse_args(argv)

    from pipelines.backends import wals
    from pipelines.evaluation.data import load_eval_data, negatives_for
    from pipelines.evaluation.protocol import evaluate
    from pipelines.evaluation.scorers import FactorScorer, Popularity

    ctx = prepare_beauty(args.data, args.home, args.sets)
    data, _, _ = load_eval_data(ctx)
    neg = negatives_for(ctx, data)
    out: dict = {"dataset": "amazon-beauty (sequences.txt, 5-core)", "protocol": "leave-one-out test, full ranking "
                 "(history excluded) and 100 sampled negatives (seed %d)" % ctx.cfg.eval.negatives_seed,
                 "fit_on": "train + valid", "hyperparameters": {k: v for k, v in dataclasses.asdict(ctx.cfg.wals).items()
                                                              if k in ("factors", "regularization", "alpha", "iterations", "seed")}}
    t0 = time.perf_counter()
    pop = evaluate(Popularity(data), data, neg, "test")
    out["popularity"] = {"HR@10": pop["full"]["HR@10"], "NDCG@10": pop["full"]["NDCG@10"],
                         "sampled100_NDCG@10": pop["sampled100"]["NDCG@10"],
                         "eval_seconds_full_and_sampled": round(time.perf_counter() - t0, 3)}
    for engine in ("implicit", "spark"):
        p = dataclasses.replace(ctx.cfg.wals, engine=engine, refit_on_valid=False)
        ectx = dataclasses.replace(ctx, cfg=dataclasses.replace(ctx.cfg, wals=p))
        fit = wals.fit(ectx, p, ("train", "valid"), "warehouse")
        test = wals.load_factors(ectx, "warehouse", data.n_users, data.n_items)
        t0 = time.perf_counter()
        met = evaluate(FactorScorer({"test": test}), data, neg, "test")
        eval_s = time.perf_counter() - t0
        out[engine] = {"fit_seconds": fit["fit_seconds"], "HR@10": met["full"]["HR@10"], "NDCG@10": met["full"]["NDCG@10"],
                       "sampled100_HR@10": met["sampled100"]["HR@10"], "sampled100_NDCG@10": met["sampled100"]["NDCG@10"],
                       "eval_seconds_full_and_sampled": round(eval_s, 3), "users": met["full"]["users"]}
        print(f"{engine}: fit {fit['fit_seconds']:.2f} s, test NDCG@10 {met['full']['NDCG@10']:.4f}, eval {eval_s:.2f} s")
    out["speedup"] = round(out["spark"]["fit_seconds"] / out["implicit"]["fit_seconds"], 2)
    out["ndcg_rel_diff"] = round(abs(out["spark"]["NDCG@10"] - out["implicit"]["NDCG@10"]) / out["implicit"]["NDCG@10"], 4)
    out["wals_over_popularity_NDCG@10"] = round(out["implicit"]["NDCG@10"] / out["popularity"]["NDCG@10"], 2)
    out["machine"] = machine()
    rows = [("engine", "fit s", "HR@10", "NDCG@10", "sampled100 NDCG@10", "eval s (22,363 users)")]
    for e in ("implicit", "spark"):
        r = out[e]
        rows.append((e, f"{r['fit_seconds']:.2f}", f"{r['HR@10']:.4f}", f"{r['NDCG@10']:.4f}",
                     f"{r['sampled100_NDCG@10']:.4f}", f"{r['eval_seconds_full_and_sampled']:.2f}"))
    notes = [f"speedup (spark fit / implicit fit, same run): {out['speedup']}x",
             f"NDCG@10 relative difference: {out['ndcg_rel_diff']:.2%}",
             f"popularity NDCG@10 {out['popularity']['NDCG@10']:.4f}; WALS/popularity {out['wals_over_popularity_NDCG@10']}x"]
    write_results("wals_engines", out, rows, notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
