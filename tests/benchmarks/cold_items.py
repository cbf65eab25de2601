"""Cold items on Beauty (issue 38): the cold-item protocol's baselines and day-one paths over seeds, for the items
first seen last (``split.cold_by=latest``) and for a seeded random share (``random``, the control).

    python tests/benchmarks/cold_items.py --config pipelines/conf/amazon_beauty.yaml \
        --set data.path=../shared/datasets/amazon-beauty [--seeds 42,43,44] [--cold-by latest,random] \
        [--models sasrec,grasp]

For each ``cold_by`` a home of its own (``HOME-<cold_by>``) is prepared once (unless it holds the day's neighbours)
with ``split.cold_items=0.1`` (``recpipe run --until neighbours``: split, WALS, metadata text vectors, neighbours;
no LLM descriptions: a cold item's text is its metadata, ``embed.sources=[metadata]``); then for every seed ``recpipe stage train_sequential``
and ``recpipe stage evaluate`` run with ``--set seed=S``. The evaluate stage scores every cold-item baseline
(``pipelines/evaluation/cold_start.py``) and each model with the day-one path it chose on the cold-valid users; its
per-user ranks (``runs/<ds>/ranks/<model>.npz``) are kept under ``HOME-<cold_by>/cold_items/seed-S``, so a re-run
of a finished seed trains nothing (``--fresh`` runs both stages again; training resumes from the seed's
checkpoints, so a seed that finished is only scored again).

Budget (the issue's): the sequential models train with the section's settings (``train_sequential.train``: lr
0.001, batch 256, patience 5), not ``per_model.sasrec``'s 200-epoch schedule, the same for every model and seed.
Reported per ``cold_by`` and row: cold-test and warm-test NDCG@10 / HR@10 (full ranking over all items, history
excluded; mean over seeds), the share of cold items in warm users' top 10, and the NDCG@10 delta to content kNN on
the cold-test users (per-seed paired deltas on the same users; the harness's two-level bootstrap, seeds then users:
content kNN, popularity and WALS do not change with the training seed, so a t-interval over seeds alone would give
their deltas zero width) and to the
ID-only SASRec on the warm-test users. ``sasrec_text_gate`` (SASRec for warm items, the cold items' text match to
the user's last item, each standardised per user) takes the threshold that keeps the warm-valid users within
``eval.day_one_warm_tolerance`` (1%); its valid trade-off (cold-valid and warm-valid NDCG@10 at every threshold
scanned) is kept per seed under ``text_gate_valid``. Results: ``results/cold_items<suffix>.{json,md}``.
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from pipelines.evaluation.stats import ndcg_at  # noqa: E402
from tests.benchmarks.common import (  # noqa: E402
    BEAUTY_DS,
    RESULTS,
    day_args,
    interval_record,
    machine,
    paired_interval_from_deltas,
    parser,
    recpipe,
    write_results,
)

# row -> the evaluate stage's model name (the ID-only rows are the models as trained, without a day-one path)
ROWS = {"popularity": "popularity", "sasrec_id_only": "sasrec_as_trained", "wals_id_only": "wals_as_trained",
        "content_knn": "content_knn", "content_knn_last": "content_knn_last", "sasrec_fill_in": "sasrec_fill_in",
        "sasrec_regressor": "sasrec_regressor", "sasrec_text_gate": "sasrec_text_gate", "wals_fill_in": "wals_fill_in",
        "sasrec": "sasrec", "wals": "wals",
        "grasp_as_trained": "grasp_as_trained", "grasp": "grasp", "llmrec": "llmrec"}
INTERVAL, RESAMPLES = "two-level", 2000
# trained day-one paths: SASRec with text-aware item vectors (models/items.py), each trained as a model of its own
# (only sasrec, same section settings and seeds); its rows are NAME (its day-one path chosen on cold-valid, which may
# be its own text rows) and NAME_as_trained
VARIANTS = {"sasrec_text_dropout": ["train_sequential.sasrec.items.source=text",
                                    "train_sequential.sasrec.items.id_dropout=0.5"],
            "sasrec_text_delta": ["train_sequential.sasrec.items.source=text",
                                  "train_sequential.sasrec.items.delta_max=0.5"]}
PROTOCOL = ["split.cold_items=0.1", "embed.sources=[metadata]", "train_sequential.text_source=metadata",
            "describe.entities=[]", "train_sequential.per_model={}"]


def run_seed(home: Path, args, sets: list[str], seed: int, models: list[str], variant: str = "") -> Path:
    """Train and evaluate one seed; its ranks and metrics under ``home/cold_items/seed-S[-VARIANT]`` (kept: a re-run
    reads them)."""
    out = home / "cold_items" / (f"seed-{seed}-{variant}" if variant else f"seed-{seed}")
    if (out / "metrics.json").exists() and not args.fresh:
        return out
    day = day_args(home, BEAUTY_DS, args.config, [*sets, f"seed={seed}", f"train_sequential.models=[{','.join(models)}]"])
    log = home / "cold_items.log"
    shutil.rmtree(home / "runs" / BEAUTY_DS / "ranks", ignore_errors=True)  # only this seed's models are kept below
    print(f"seed {seed}: train_sequential {recpipe(['stage', 'train_sequential', *day], log):.0f} s, "
          f"evaluate {recpipe(['stage', 'evaluate', *day], log):.0f} s", flush=True)
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(home / "runs" / BEAUTY_DS / "ranks", out / "ranks")
    shutil.copy(home / "runs" / BEAUTY_DS / "metrics.json", out / "metrics.json")
    return out


def seed_figures(out: Path, rows: dict[str, str] = ROWS) -> dict[str, dict]:
    """Per row: the users, per-user cold/warm NDCG@10 and HR@10, and the cold share of warm top-10 lists."""
    figs = {}
    for row, name in rows.items():
        f = out / "ranks" / f"{name}.npz"
        if f.exists():
            z = np.load(f)
            figs[row] = {"users": z["users"], "cold": z["cold"], "warm": z["warm"], "ndcg": ndcg_at(z["full"], 10),
                         "hr": (z["full"] < 10).astype(float), "cold_top10": z["cold_top10"]}
    return figs


def trade_offs(outs: list[Path]) -> dict:
    """The text gate's valid trade-off per seed (``sasrec_text_gate``'s notes: cold-valid and warm-valid NDCG@10 by
    threshold, the threshold chosen under the warm bound, the model's own warm-valid figure)."""
    keep = ("threshold", "warm_tolerance", "warm_valid_NDCG@10_own", "valid_NDCG@10_by_threshold")
    notes = {o.name: json.loads((o / "metrics.json").read_text()).get("sasrec_text_gate", {}).get("notes", {})
             for o in outs}
    return {seed: {k: n[k] for k in keep if k in n} for seed, n in notes.items() if n}


def summarise(per_seed: list[dict[str, dict]]) -> dict:
    """Means over seeds and the paired intervals of one ``cold_by``."""
    ref = per_seed[0]["content_knn"]
    models = {}
    for row in [r for r in per_seed[0] if all(r in s for s in per_seed)]:
        for s in per_seed:
            assert np.array_equal(s[row]["users"], ref["users"]), f"{row} scored other users than content kNN"
        mean = lambda grp, key, row=row: float(np.mean([s[row][key][s[row][grp]].mean()  # noqa: E731
                                                        for s in per_seed]))
        rec = {g: {"NDCG@10": mean(g, "ndcg"), "HR@10": mean(g, "hr")} for g in ("cold", "warm")}
        rec["warm"]["cold_share_top10"] = mean("warm", "cold_top10")
        diff = lambda other, grp, row=row: [s[row]["ndcg"][s[row][grp]] - s[other]["ndcg"][s[other][grp]]  # noqa: E731
                                            for s in per_seed]
        cold = paired_interval_from_deltas(diff("content_knn", "cold"), INTERVAL, resamples=RESAMPLES)
        rec |= {"delta_vs_content_knn_cold": cold["delta"], "delta_vs_content_knn_cold_ci95": cold["ci95"],
                "per_seed_deltas_vs_content_knn_cold": cold["per_seed_deltas"]}
        if "sasrec_id_only" in per_seed[0]:
            warm = paired_interval_from_deltas(diff("sasrec_id_only", "warm"), INTERVAL, resamples=RESAMPLES)
            rec |= {"delta_vs_sasrec_id_only_warm": warm["delta"], "delta_vs_sasrec_id_only_warm_ci95": warm["ci95"]}
        models[row] = rec
    return {"models": models, "n_cold_test_users": int(ref["cold"].sum()), "n_warm_test_users": int(ref["warm"].sum())}


def table(payload: dict) -> list[tuple]:
    rows = [("cold_by", "model", "cold NDCG@10", "cold HR@10", "warm NDCG@10", "warm HR@10", "cold share of warm top 10",
             "cold delta vs content kNN [95% CI]", "warm delta vs SASRec ID-only [95% CI]")]
    ci = lambda d, k: f"{d[k]:+.4f} [{d[k + '_ci95'][0]:+.4f}, {d[k + '_ci95'][1]:+.4f}]" if k in d else "-"  # noqa: E731
    for by, res in payload["cold_by"].items():
        for name, m in res["models"].items():
            rows.append((by, name, *(f"{m[g][k]:.4f}" for g in ("cold", "warm") for k in ("NDCG@10", "HR@10")),
                         f"{m['warm']['cold_share_top10']:.3f}", ci(m, "delta_vs_content_knn_cold"),
                         ci(m, "delta_vs_sasrec_id_only_warm")))
    return rows


def kept_cold_by(name: str, run: list[str]) -> tuple[dict, list[str]]:
    """The earlier results file's ``cold_by`` entries this run does not redo, and a note for each."""
    f = RESULTS / f"{name}.json"
    prev = json.loads(f.read_text()) if f.exists() else {}
    kept = {b: r for b, r in prev.get("cold_by", {}).items() if b not in run}
    commit = prev.get("meta", {}).get("commit", "?")
    return kept, [f"{b}: figures kept from this file's earlier run (commit {commit}), not re-run" for b in kept]


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__, home="/tmp/recpipe-bench-cold")
    ap.add_argument("--cold-by", default="latest,random", help="comma list of split.cold_by values")
    ap.add_argument("--models", default="sasrec,grasp", help="train_sequential.models for every seed")
    ap.add_argument("--variants", default="", help=f"comma list of trained day-one variants to add: {', '.join(VARIANTS)}")
    ap.add_argument("--fresh", action="store_true", help="train (resume) and evaluate every seed again even where its figures are kept")
    args = ap.parse_args(argv)
    variants = [v for v in args.variants.split(",") if v]
    models, payload = args.models.split(","), {"dataset": "amazon-beauty", "seeds": args.seeds, "cold_by": {},
                                               "machine": machine(), "interval": interval_record(INTERVAL, resamples=RESAMPLES, reference="content kNN")}
    payload["cold_by"], kept_notes = kept_cold_by(f"cold_items{args.suffix}", args.cold_by.split(","))
    payload["protocol"] = ("leave-one-out, full ranking over all items with history excluded; split.cold_items=0.1 "
                           "(cold-valid / cold-test halves); cold-test and warm-test users of the test phase")
    for by in args.cold_by.split(","):
        home, sets = Path(f"{args.home}-{by}"), [*PROTOCOL, f"split.cold_by={by}", *args.sets]
        if not (args.skip_prepare or (home / "warehouse" / "neighbours" / f"ds={BEAUTY_DS}").exists()):
            day = day_args(home, BEAUTY_DS, args.config, sets)
            print(f"{by}: prepare {recpipe(['run', '--until', 'neighbours', *day], Path(f'{home}.log')):.0f} s", flush=True)
        outs = [run_seed(home, args, sets, s, models) for s in args.seeds]
        figs = [seed_figures(o) for o in outs]
        for v in variants:
            for f, s in zip(figs, args.seeds, strict=True):
                f |= seed_figures(run_seed(home, args, [*sets, *VARIANTS[v]], s, ["sasrec"], v),
                                  {v: "sasrec", f"{v}_as_trained": "sasrec_as_trained"})
        payload["cold_by"][by] = summarise(figs) | {"text_gate_valid": trade_offs(outs)}
        payload["cold_by"] = {b: payload["cold_by"][b] for b in ("latest", "random") if b in payload["cold_by"]}
        first = payload["cold_by"][next(iter(payload["cold_by"]))]
        payload |= {k: first[k] for k in ("n_cold_test_users", "n_warm_test_users")}
        notes = [f"models trained: {', '.join(models)} (train_sequential, the section's settings for every model); "
                 "seeds kept from an earlier run keep that run's models: rows without figures were not run", "text: item metadata only (no LLM descriptions)",
                 "sasrec_text_gate: threshold chosen on valid under a 1% warm-valid bound; the valid trade-off at every "
                 "threshold scanned is in the JSON (text_gate_valid)",
                 *(f"{v}: SASRec trained with {' '.join(VARIANTS[v])} (models/items.py; only sasrec trained, same "
                   "settings and seeds); its row takes the day-one path chosen on cold-valid" for v in variants),
                 f"seeds {args.seeds}; deltas: paired on the same users, 95% two-level bootstrap (seeds, then users; "
                 f"{RESAMPLES} resamples)",
                 *(f"{b}: {r['n_cold_test_users']} cold-test users, {r['n_warm_test_users']} warm-test users"
                   for b, r in payload["cold_by"].items()), *kept_notes]
        write_results(f"cold_items{args.suffix}", payload, table(payload), notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
