"""Valid-phase comparison of trained SASRec/GRASP variants on Amazon Beauty: NDCG@10 overall, on the short-history
and tail-item slices, and by the train popularity of the held-out item, to choose GRASP settings without reading test.

    python tests/benchmarks/grasp_tuning.py LABEL=HOME:MODEL [...] [--out grasp_tuning] [--note TEXT ...]

Each ``HOME`` holds a finished ``train_sequential`` run of ds 2026-11-24 (``runs/<ds>/train_sequential/<MODEL>/``,
e.g. from ``python -m pipelines.cli stage train_sequential --config pipelines/conf/amazon_beauty.yaml --home HOME
--ds 2026-11-24 --set train_sequential.models=[grasp] --set train_sequential.grasp.KEY=VALUE`` in a hard-linked copy
of the bench home's warehouse).
The first entry is the reference the gains are computed against. Only the valid phase is evaluated (full ranking,
the shared protocol); writes ``tests/benchmarks/results/<out>.{json,md}``.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.benchmarks.common import BEAUTY_DS, machine, parser, write_results  # noqa: E402

BUCKETS = (0, 5, 10, 20, 40, 80)  # lower edges of the target's train-interaction count


def valid_report(home: Path, model: str, data_path: str) -> dict:
    """One full-ranking pass over the valid targets; overall, slice and popularity-bucket figures from its ranks."""
    from pipelines.config import CONF_DIR, load_config
    from pipelines.context import StageContext
    from pipelines.evaluation import scorers
    from pipelines.evaluation.data import eval_kwargs, load_eval_data, negatives_for
    from pipelines.evaluation.protocol import metrics_from_ranks, slice_masks, target_ranks

    cfg = load_config(CONF_DIR / "amazon_beauty.yaml", [f"data.path={data_path}"])
    ctx = StageContext(cfg, BEAUTY_DS, home.resolve())
    data, _, _ = load_eval_data(ctx)
    kw = eval_kwargs(cfg)
    scorer, _ = scorers.vectors(ctx.model_dir("train_sequential", model) / "vectors.npz", data)
    users = np.flatnonzero(data.targets("valid") > 0)
    full, _ = target_ranks(scorer, data, "valid", users, negatives_for(ctx, data), kw["batch"])
    ndcg10 = lambda m: metrics_from_ranks(full[m], kw["ks"])["NDCG@10"]  # noqa: E731
    masks = slice_masks(data, "valid", kw["short_quantile"], kw["tail_fraction"])
    pop = data.popularity("valid")[data.targets("valid")[users]]                # train count of each target
    edges = (*BUCKETS, np.inf)
    buckets = {f"{lo}-{hi - 1 if np.isfinite(hi) else ''}": {"users": int(m.sum()), "NDCG@10": ndcg10(m)}
               for lo, hi in zip(edges[:-1], edges[1:], strict=True) for m in [(pop >= lo) & (pop < hi)]}
    train = json.loads((ctx.model_dir("train_sequential", model) / "result.json").read_text())
    overall = metrics_from_ranks(full, kw["ks"])
    return {"home": str(home), "model": model, "NDCG@10": overall["NDCG@10"], "HR@10": overall["HR@10"],
            **{sl: ndcg10(masks[sl][users]) for sl in ("short_history", "tail_items")},
            "by_target_popularity": buckets,
            **{k: train[k] for k in ("best_epoch", "epochs_run", "epoch_seconds", "text_source")}}


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__, shared=("data",))
    ap.add_argument("runs", nargs="+", metavar="LABEL=HOME:MODEL")
    ap.add_argument("--out", default="grasp_tuning")
    ap.add_argument("--note", action="append", default=[])
    args = ap.parse_args(argv)
    out: dict = {}
    for spec in args.runs:
        label, _, rest = spec.partition("=")
        home, _, model = rest.rpartition(":")
        if not (label and home and model in ("sasrec", "grasp")):
            ap.error(f"'{spec}': expected LABEL=HOME:MODEL with MODEL sasrec or grasp")
        out[label] = valid_report(Path(home), model, args.data)
        print(label, {k: v for k, v in out[label].items() if k != "by_target_popularity"}, flush=True)
    ref = next(iter(out.values()))
    pct = lambda a, b: f"{(a / b - 1) * 100:+.1f}%" if b else "-"  # noqa: E731
    head = ["run", "valid NDCG@10", "short-history", "tail items",
            *[f"target seen {b}" for b in ref["by_target_popularity"]], "best epoch (of)", "s/epoch"]
    rows = [head]
    for label, r in out.items():
        rows.append([label, *(f"{r[s]:.4f} ({pct(r[s], ref[s])})" for s in ("NDCG@10", "short_history", "tail_items")),
                     *(f"{v['NDCG@10']:.4f}" for v in r["by_target_popularity"].values()),
                     f"{r['best_epoch']} ({r['epochs_run']})", str(r["epoch_seconds"])])
    rows.append(["users", "", "", "", *(str(v["users"]) for v in ref["by_target_popularity"].values()), "", ""])
    notes = ["Amazon Beauty, ds 2026-11-24, seed 42, leave-one-out, valid phase only, full ranking; "
             f"slices and gains relative to '{next(iter(out))}'", *args.note]
    write_results(args.out, {"runs": out, "machine": machine()}, rows, notes)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
