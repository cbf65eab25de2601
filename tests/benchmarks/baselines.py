"""Baselines over seeds with paired intervals that include training variance: SASRec and GRASP (both text
sources), every choice on valid.

    python tests/benchmarks/baselines.py --config pipelines/conf/amazon_beauty.yaml \
        --set data.path=../shared/datasets/amazon-beauty [--seeds 42,43,44] [--variants sasrec,grasp,grasp[metadata]]

``--variants sasrec,llmrec`` measures the LLM recommender the same way (``recpipe stage train_llmrec``).

The day is prepared once (``recpipe run --until neighbours``: split, WALS, descriptions, embeddings, neighbours);
then for every seed and variant (SASRec, the reference, first; the others in ``VARIANTS``' order, whatever the order
of ``--variants``) its training stage (``recpipe stage train_sequential``; ``train_llmrec`` for llmrec) and
``recpipe stage evaluate`` run with ``--set seed=S`` (the protocol's negatives keep their own seed), and the
evaluate stage's per-user ranks (``runs/<ds>/ranks/<model>.npz``) are kept. Reported per variant: mean and standard
deviation over seeds of every headline metric (test, full ranking; sampled 100; the short-history and tail-item
slices; valid NDCG@10), epoch time and time to the best epoch; for every variant but SASRec its NDCG@10 delta to
SASRec, overall and per slice: the per-seed paired deltas (seed i minus SASRec's seed i, on the users every run
scored), their mean and the harness's 95% interval (``--interval t``, the default: Student t over the per-seed
deltas; ``two-level``: a bootstrap over seeds, then users), which includes run-to-run training variance; a verdict
that says "better" or "worse" only where that interval excludes 0; and, for comparison, the user-only bootstrap
(``*_ci95_users_only``), which leaves training variance out. Where a run scored other users than the pairs share,
the payload and the table's notes say so (the means are each run's own users). Each setting of the config is
listed with the split that chose it (``PROVENANCE``). Results: ``results/<name><suffix>.{json,md}`` (``--name``,
default ``baselines``).

Issue 39's text-aware SASRec rows (``--name text_gain``; metadata text, no LLM descriptions needed)::

    python tests/benchmarks/baselines.py --config pipelines/conf/amazon_beauty.yaml --name text_gain \
        --set data.path=../shared/datasets/amazon-beauty --set describe.entities=[] --set embed.sources=[metadata] \
        --seeds 42 --variants sasrec,sasrec_text_delta[metadata]

Every finished (seed, variant) leaves its ranks and a record (metrics, training figures) under ``HOME/baselines/``;
a re-run with the same day, resolved config and model code takes those from there instead of training again,
so a killed run loses at most the run it was in. The key does not cover the data: after changing the data behind
``--home``/``--ds``, pass ``--fresh`` (or delete ``HOME/baselines``).

``--merge A.json,B.json`` trains nothing: it writes one results file from runs that added different variants against
the same SASRec models (checked: every per-seed figure and best epoch of SASRec must agree, as they do when a run
reuses the other's finished SASRec checkpoints, whose key covers settings, code and data, or retrains it
deterministically). Each delta stays the one computed in its own run.

``--from-records`` trains nothing: it writes the results from the (seed, variant) runs kept under
``HOME/baselines``, whatever code or config made them (each run's record names the commit that trained or
evaluated it), e.g. rows evaluated at an earlier commit whose model code matched the trained checkpoints.

With one seed (``--seeds 42``: issue 39's screening) the rows carry the paired bootstrap over users as their
interval and the verdict "screening (1 seed)": no interval over seeds exists, so nothing is called better or worse.

``--reinterval FILE.json`` trains nothing: it recomputes every delta's t-interval from the file's per-seed figures
(valid where every run scored the same users, as with ``users: all``), keeps the earlier interval as
``*_ci95_users_only`` and rewrites ``results/baselines<suffix>``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from features.text import content_hash  # noqa: E402
from jobs.warehouse import write_json  # noqa: E402
from pipelines.config import load_config  # noqa: E402
from pipelines.evaluation.stats import paired_bootstrap, paired_difference  # noqa: E402
from pipelines.training import llmrec as llmrec_training  # noqa: E402
from pipelines.training.sequential import code_version  # noqa: E402
from tests.benchmarks.common import (  # noqa: E402
    INTERVALS,
    ROOT,
    commit,
    day_args,
    interval_record,
    machine,
    paired_interval,
    paired_interval_from_deltas,
    parser,
    recpipe,
    run_variants,
    variant_order,
    write_results,
)

# SASRec's recipe (amazon_beauty.yaml's per_model.sasrec) given to GRASP, for issue 39's GRASP trained as fairly
GRASP_AS_SASREC = [f"train_sequential.per_model.grasp.{k}" for k in (
    "sasrec.block=original", "sasrec.item_init_std=0.0128", "sasrec.dropout=0.6", "sasrec.n_heads=1",
    "train.batch_size=512", "train.weight_decay=1e-08", "train.epochs=200", "train.patience=20", "min_batches=40")]
# label -> (overrides of its stage's section, the model name the stage writes, the stage that trains it)
VARIANTS = {
    "sasrec": (["train_sequential.models=[sasrec]"], "sasrec", "train_sequential"),
    "grasp": (["train_sequential.models=[grasp]", "train_sequential.text_source=descriptions"], "grasp",
              "train_sequential"),
    "grasp[metadata]": (["train_sequential.models=[grasp]", "train_sequential.text_source=metadata"], "grasp",
                        "train_sequential"),
    # the LLM recommender (llmrec.* as configured; on a CPU, pass a seeded eval.users subset: every variant is then
    # scored on those users, and the deltas pair the users all runs share)
    "llmrec": ([], "llmrec", "train_llmrec"),
    # issue 39's text-aware item vectors on SASRec's own recipe (per_model.sasrec): frozen, standardised text through
    # a learned map plus a per-item delta of norm at most 0.5 (mechanism 2), or a free delta dropped for half the
    # items each step (mechanism 3, DropoutNet's usual 0.5); run with --name text_gain
    "sasrec_text_delta[metadata]": (["train_sequential.models=[sasrec]", "train_sequential.text_source=metadata",
                                     "train_sequential.sasrec.items.source=text",
                                     "train_sequential.sasrec.items.delta_max=0.5"], "sasrec", "train_sequential"),
    "sasrec_text_dropout[metadata]": (["train_sequential.models=[sasrec]", "train_sequential.text_source=metadata",
                                       "train_sequential.sasrec.items.source=text",
                                       "train_sequential.sasrec.items.id_dropout=0.5"], "sasrec", "train_sequential"),
    # mechanism 1: SASRec's own id table, started from the whitened principal components of the text at the random
    # init's scale
    "sasrec_text_pca[metadata]": (["train_sequential.models=[sasrec]", "train_sequential.text_source=metadata",
                                   "train_sequential.sasrec.items.source=pca"], "sasrec", "train_sequential"),
    # mechanism 4: CE's target spread over the item's 10 text neighbours (weight 0.3, temperature 0.1), annealed
    # to plain CE over the first 20 epochs
    "sasrec_soft_targets[metadata]": (["train_sequential.models=[sasrec]", "train_sequential.text_source=metadata",
                                       "train_sequential.soft_targets.weight=0.3"], "sasrec", "train_sequential"),
    # mechanism 6: GRASP trained as SASRec is (per_model.sasrec's budget, patience, batch, dropout, block, init,
    # min_batches), at two learning rates; the row of the one better on valid is the one that counts
    **{f"grasp_fair_lr{lr}[metadata]": (["train_sequential.models=[grasp]", "train_sequential.text_source=metadata",
                                        *GRASP_AS_SASREC, f"train_sequential.per_model.grasp.train.lr={lr}"], "grasp",
                                       "train_sequential") for lr in ("0.0005", "0.001")},
    # mechanism 5, late fusion: the trained SASRec (its checkpoint reused) scored by the evaluate stage with the
    # text match to the history added (pipelines.evaluation.fusion; beta and decay chosen on valid)
    "sasrec_late_fusion[metadata]": (["train_sequential.models=[sasrec]", "eval.late_fusion=[sasrec]",
                                      "eval.late_fusion_text=metadata"], "sasrec_late_fusion", "train_sequential"),
    # the same with the text first mapped into SASRec's item space (InfoNCE on its trained items: issue 39's
    # alignment row)
    "sasrec_late_fusion_aligned[metadata]": (["train_sequential.models=[sasrec]", "eval.late_fusion=[sasrec]",
                                              "eval.late_fusion_text=metadata", "eval.late_fusion_align=true"],
                                             "sasrec_late_fusion", "train_sequential"),
    "sasrec_text_delta_late_fusion[metadata]": (
        ["train_sequential.models=[sasrec]", "train_sequential.text_source=metadata",
         "train_sequential.sasrec.items.source=text", "train_sequential.sasrec.items.delta_max=0.5",
         "eval.late_fusion=[sasrec]", "eval.late_fusion_text=metadata"], "sasrec_late_fusion", "train_sequential"),
}
SCREENING = "screening (1 seed)"  # a one-seed row's verdict: its interval is over users alone, no training variance
FUSED = "_late_fusion"  # an evaluated row on top of the model its name starts with (the one its stage trained)
FUSION_CODE = ROOT / "pipelines" / "evaluation" / "fusion.py"
HEADLINE = [("full", "NDCG@10"), ("full", "HR@10"), ("full", "NDCG@20"), ("full", "HR@20"), ("full", "MRR"),
            ("sampled100", "NDCG@10"), ("short_history", "NDCG@10"), ("tail_items", "NDCG@10"), ("valid", "NDCG@10")]
SLICES = ("short_history", "tail_items")
# The split each setting of the shipped configs was chosen on, and where the figures are. "default": the
# method's paper value, not searched. Keep in step with pipelines/conf/amazon_beauty.yaml.
PROVENANCE = {
    "wals.factors / regularization / alpha": ("valid", "results/wals_tuning.md"),
    "train_sequential.per_model.sasrec (SASRec's own: block, item_init_std, dropout, n_heads, lr, batch_size, "
    "weight_decay, epochs, patience)": ("valid", "results/sasrec_public.md (ce_original_weighted 0.0723 against "
                                                 "0.0714 with the section's settings; SASRec, seed 42)"),
    "train_sequential.per_model.sasrec.min_batches": ("valid", "results/heldout_ml100k_strong_min_batches.md "
                                                               "(MovieLens-100k: 0.1167 against 0.0907 without)"),
    "train_sequential.sasrec.dropout (GRASP's)": ("valid", "results/sasrec_tuning.md (chosen on SASRec's valid)"),
    "train_sequential.train.lr (GRASP's)": ("valid", "results/sasrec_tuning.md (chosen on SASRec's valid)"),
    "train_sequential.train.patience (GRASP's)": ("valid", "results/sasrec_tuning.md (chosen on SASRec's valid)"),
    "train_sequential.sasrec.hidden": ("valid", "results/sasrec_tuning.md (64 vs 128)"),
    "train_sequential.sasrec.n_layers / max_len, n_heads (GRASP's)": ("default", "SASRec paper"),
    "train_sequential.batching": ("valid", "results/sasrec_public.md (length_weighted 0.0714, random 0.0706, length "
                                           "0.0636; SASRec, seed 42)"),
    "train_sequential.grasp.text_init": ("valid", "worst case over Beauty (results/grasp_tuning.md) and "
                                                  "MovieLens-100k (results/heldout_ml100k.md)"),
    "train_sequential.grasp.item_adapter_ids": ("valid", "as text_init"),
    "train_sequential.grasp.user_neighbours": ("test, then valid", "first set after reading test figures (the GPU "
                                               "runs of 2026-11-24), then confirmed on valid: "
                                               "results/grasp_user_neighbours.md (false 0.0627, true 0.0601)"),
    "web.keywords": ("valid", "results/webrec_beauty.md"),
    "llmrec.rerank_mix": ("valid", "chosen per run on valid (evaluate stage)"),
}


def cli(home: Path, ds: str, config: str | None, sets: list[str], *args: str, log: Path) -> float:
    return recpipe([*args, *day_args(home, ds, config, sets)], log)


def run_key(ds: str, config: str | None, sets: list[str], name: str) -> str:
    """What a kept run stands for: the day, the resolved config (comments and key order do not count) and the
    model's code."""
    resolved = json.dumps(dataclasses.asdict(load_config(config, sets)), sort_keys=True, default=str)
    code = llmrec_training.code_version() if name == "llmrec" else code_version(name.removesuffix(FUSED))
    return content_hash(ds, resolved, code, *([FUSION_CODE.read_text()] if name.endswith(FUSED) else []))


def stats(values: list[float]) -> tuple[float, float]:
    a = np.asarray(values, np.float64)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def metric(m: dict, where: str, name: str) -> float:
    if where in SLICES:
        return m["slices"][where]["full"][name]
    if where == "valid":
        return m["valid"]["full"][name]
    return m[where][name]


def training_figures(result: dict) -> tuple[dict, bool]:
    """The training figures of a stage's ``result.json`` and whether this run trained an epoch (False: the stage
    reused a finished checkpoint of the same key, trained by an earlier run whose commit this one cannot know).
    llmrec's result holds one entry per training stage: the last (stage2 with LoRA, else stage1) made the model."""
    if "stages" in result:
        result = result["stages"][max(result["stages"])]
    figures = {k: result.get(k) for k in ("best_epoch", "epochs_run", "resumed_from_epoch", "epoch_seconds",
                                          "seconds_to_best", "train_seconds", "best_valid_NDCG@10")}
    return figures, (result.get("resumed_from_epoch") or 0) < (result.get("epochs_run") or 0)


def report(payload: dict) -> tuple[list[tuple], list[str]]:
    """The table and notes of results/baselines<suffix>.md, from the JSON payload alone (a merge writes them too)."""
    models, reference = payload["models"], payload["references"]
    rows = [("model", "NDCG@10", "HR@10", "sampled100 NDCG@10", "short-history NDCG@10", "tail-items NDCG@10",
             "valid NDCG@10", "delta NDCG@10 vs SASRec [95% CI]", "verdict", "s/epoch", "s to best")]
    for label, r in models.items():
        ci = (f"{r['delta_vs_sasrec']:+.4f} [{r['delta_vs_sasrec_ci95'][0]:+.4f}, {r['delta_vs_sasrec_ci95'][1]:+.4f}]"
              if label != "sasrec" else "-")
        rows.append((label, *[f"{r[k + '_mean']:.4f} ± {r[k + '_std']:.4f}" for k in
                              ("NDCG@10", "HR@10", "sampled100_NDCG@10", "short_history_NDCG@10",
                               "tail_items_NDCG@10", "valid_NDCG@10")],
                     ci, r.get("verdict", "-"), f"{r['epoch_seconds_mean']:.1f}", f"{r['seconds_to_best_mean']:.0f}"))
    for ref, v in reference.items():
        rows.append((ref, f"{v['full:NDCG@10']:.4f}", f"{v['full:HR@10']:.4f}", f"{v['sampled100:NDCG@10']:.4f}",
                     f"{v['short_history:NDCG@10']:.4f}", f"{v['tail_items:NDCG@10']:.4f}",
                     f"{v['valid:NDCG@10']:.4f}", "-", "-", "-", "-"))
    notes = [f"dataset {payload['dataset']}, ds {payload['ds']}, seeds {payload['seeds']} (mean ± std over seeds); "
             f"{payload['protocol']}", interval_note(payload)]
    for label, r in models.items():
        if label != "sasrec":
            notes.append(f"{label} vs SASRec by slice: " + "; ".join(
                f"{s} {r[f'{s}_delta_vs_sasrec']:+.4f} [{r[f'{s}_delta_vs_sasrec_ci95'][0]:+.4f}, "
                f"{r[f'{s}_delta_vs_sasrec_ci95'][1]:+.4f}] ({r[f'{s}_verdict']})" for s in SLICES))
        if r.get("users_differ"):
            notes.append(f"{label}: {r['users_differ']}")
    notes += source_notes(payload)
    notes.append("trained at commit: " + "; ".join(
        f"{label} {', '.join(sorted({t['commit'] for t in r['training']}))}" for label, r in models.items()))
    notes.append("settings and the split that chose them: " + "; ".join(
        f"{k}: {v['chosen_on']} ({v['source']})" for k, v in payload["settings"].items()))
    return rows, notes


def interval_note(payload: dict) -> str:
    """What the deltas and their intervals are (files written before ``interval`` existed: the user-only one)."""
    if "interval" not in payload:
        return (f"delta: paired bootstrap over users ({payload['bootstrap']['resamples']:,} resamples), seed i paired "
                "with seed i; 'better'/'worse' only where the 95% interval excludes 0")
    iv, models = payload["interval"], payload["models"]
    if len(payload["seeds"]) == 1:
        return ("one seed (screening, valid decides; test shown for the record): the interval is the paired bootstrap "
                f"over users alone ({payload['bootstrap']['resamples']:,} resamples), which leaves training variance "
                "out (about half the width of one that includes it), so no row is called better or worse")
    users_only = "; ".join(f"{label} [{r['delta_vs_sasrec_ci95_users_only'][0]:+.4f}, "
                           f"{r['delta_vs_sasrec_ci95_users_only'][1]:+.4f}]" for label, r in models.items()
                           if "delta_vs_sasrec_ci95_users_only" in r)
    return (f"delta: the mean of the per-seed paired deltas ({iv['deltas']}); 95% interval: {iv['method']}, which "
            "includes run-to-run training variance" + (f" (computed from {iv['from']})" if iv.get("from") else "")
            + "; 'better'/'worse' only where it excludes 0"
            + (f"; for comparison, the paired bootstrap over users alone ({payload['bootstrap']['resamples']:,} "
               f"resamples), which leaves training variance out: {users_only}" if users_only else ""))


def source_notes(payload: dict) -> list[str]:
    """Where a merged file's models came from (files that may since have left the tree: git keeps them)."""
    notes = []
    for src in payload.get("sources", []):
        where = (f"its results file has left the tree and is in git history: git show {src['in_git_at']}:"
                 f"{src['file']}" if src.get("in_git_at") else f"its results file: {src['file']}")
        notes.append(f"{', '.join(src['models'])}: from the run `{src['command']}` ({src['date']}; its SASRec: "
                     f"{', '.join(src['sasrec_commits'])}); {where}")
    if "sources" in payload:
        notes.append("merged: each delta was computed in the run that trained its model, paired with that run's "
                     "SASRec; SASRec's per-seed figures and best epochs are the same in every source (checked when "
                     "merging), so every delta is against the same SASRec models")
    if "llmrec" in payload["models"]:
        notes.append("llmrec's s/epoch and s to best are those of its last training stage (stage 2 when LoRA is on)")
    return notes


def merge(files: list[Path], suffix: str) -> int:
    """One results file from runs that trained different variants against the same SASRec (``--merge``).

    Refused unless every file holds the same day, dataset, protocol, bootstrap, seeds and references and SASRec's
    per-seed figures agree exactly (a deterministic re-run gives the same models), since each delta was paired with
    its own run's SASRec."""
    if len(files) < 2:
        sys.exit("--merge: give two or more results files, comma-separated")
    loaded = []
    for f in files:
        try:
            loaded.append((f, json.loads(f.read_text())))
        except (OSError, json.JSONDecodeError) as e:
            sys.exit(f"--merge: cannot read {f}: {e}")
    (f0, d0), models, sources = loaded[0], {}, []
    for f, d in loaded:
        if "sasrec" not in d.get("models", {}):
            sys.exit(f"--merge: {f} has no SASRec run; merge results/baselines*.json files written by this script")
        for k in ("ds", "dataset", "protocol", "bootstrap", "interval", "seeds", "references"):
            if d.get(k) != d0.get(k):
                sys.exit(f"--merge: {f} has {k} = {d.get(k)!r} but {f0} has {d0.get(k)!r}; only runs of one day, "
                         "protocol and seeds merge")
        s, s0 = d["models"]["sasrec"], d0["models"]["sasrec"]
        differ = [k for k in s0 if k.endswith("_per_seed") and s.get(k) != s0[k]]
        if [t.get("best_epoch") for t in s["training"]] != [t.get("best_epoch") for t in s0["training"]]:
            differ.append("best_epoch")
        if differ:
            sys.exit(f"--merge: SASRec's {', '.join(differ)} differ between {f} and {f0}: their deltas are paired "
                     "with different SASRec models; run the variants together in one --variants instead")
        labels = [label for label in d["models"] if label != "sasrec"]
        for label in labels:
            if label in models:
                sys.exit(f"--merge: {label} is in {models[label]['source']} and in {f}; keep one of them")
            models[label] = {"source": str(f)} | d["models"][label]  # a merged file's own source stays
        if "sources" in d:  # a merged file: its own sources stand for its variants
            sources += [src for src in d["sources"] if src["models"]]
            continue
        sources.append({"file": str(f), "models": labels, "overrides": d.get("overrides"),
                        "sasrec_commits": sorted({t.get("commit", "not recorded") for t in s["training"]}),
                        "command": d["machine"]["command"], "date": d["machine"]["date"]})
    models = {label: models[label] for label in [*VARIANTS, *models] if label in models}  # the usual order
    payload = {k: d0[k] for k in ("seeds", "ds", "config", "dataset", "protocol", "bootstrap", "interval") if k in d0}
    payload.update({"models": {"sasrec": d0["models"]["sasrec"], **models}, "references": d0["references"],
                    "sources": sources,
                    "settings": {k: {"chosen_on": v[0], "source": v[1]} for k, v in PROVENANCE.items()},
                    "machine": machine()})
    write_results(f"baselines{suffix}", payload, *report(payload))
    return 0


def train_one(args: argparse.Namespace, seed: int, label: str, spec: tuple[list[str], str, str]) -> dict:
    """One (seed, variant): kept from ``HOME/baselines`` when its record's key matches, else trained and evaluated.
    Returns ``ranks`` (the evaluate stage's per-user ranks and slice masks), ``metrics`` (the model's entry of
    ``metrics.json``), ``training`` (figures, wall time, commit) and ``references`` (popularity, WALS)."""
    extra, name, stage = spec
    sets = [*args.sets, *extra, f"seed={seed}", "refresh.mode=full"]
    out = Path(args.home) / "baselines" / f"seed{seed}"
    out.mkdir(parents=True, exist_ok=True)
    safe = label.replace("[", "_").replace("]", "")
    key = run_key(args.ds, args.config, sets, name)
    record_file = out / f"{safe}.json"
    record = json.loads(record_file.read_text()) if record_file.exists() and not args.fresh else {}
    if args.from_records and not (record and (out / f"{safe}.npz").exists()):
        sys.exit(f"--from-records: no finished run of {label}, seed {seed} in {out} (train it first)")
    if (record.get("key") == key or args.from_records) and (out / f"{safe}.npz").exists():
        print(f"seed {seed} {label}: kept from {record_file}", flush=True)
    else:
        record = train_and_evaluate(args, sets, key, name, stage, out / safe)
    with np.load(out / f"{safe}.npz") as z:
        ranks = {k: z[k] for k in z.files}
    m = record["metrics"]
    print(f"seed {seed} {label}: test NDCG@10 {m['full']['NDCG@10']:.4f}, valid {m['valid']['full']['NDCG@10']:.4f}, "
          f"{record['training']['wall_seconds']:.0f} s", flush=True)
    return {"ranks": ranks, "metrics": m, "references": record["references"],
            "training": record["training"] | {"commit": record.get("commit", "not recorded")}}


def train_and_evaluate(args: argparse.Namespace, sets: list[str], key: str, name: str, stage: str, out: Path) -> dict:
    """The variant's training stage and ``evaluate`` in HOME; its ranks to ``OUT.npz``, then its record to
    ``OUT.json`` (last, atomically: the record vouches for the ranks beside it). Returns the record."""
    home, log = Path(args.home), Path(args.home) / "baselines.log"
    wall = cli(home, args.ds, args.config, sets, "stage", stage, log=log)
    cli(home, args.ds, args.config, sets, "stage", "evaluate", log=log)
    run = home / "runs" / args.ds
    m = json.loads((run / "metrics.json").read_text())
    result = run / stage / name.removesuffix(FUSED) / "result.json"
    figures, trained = training_figures(json.loads(result.read_text()))
    record = {"key": key, "overrides": sets, "metrics": m[name],
              "commit": commit() if trained else f"reused checkpoint, evaluated at {commit()}",
              "references": {r: m[r] for r in ("popularity", "wals") if r in m},
              "training": figures | {"wall_seconds": wall}}
    shutil.copy2(run / "ranks" / f"{name}.npz", out.with_suffix(".npz"))
    write_json(out.with_suffix(".json"), record)
    return record


def summarise(runs: list[dict]) -> dict:
    """Mean, standard deviation and per-seed list of every headline figure over a variant's seeds; training."""
    r: dict = {}
    for where, name in HEADLINE:
        key = name if where == "full" else f"{where}_{name}"
        per_seed = [metric(x["metrics"], where, name) for x in runs]
        r[f"{key}_mean"], r[f"{key}_std"] = stats(per_seed)
        r[f"{key}_per_seed"] = per_seed
    training = [x["training"] for x in runs]
    for k in ("epoch_seconds", "seconds_to_best", "best_epoch"):
        r[f"{k}_mean"] = stats([t[k] for t in training if t[k] is not None])[0]
    r["training"] = training
    return r


def compare(runs: list[dict], sasrec: list[dict], method: str, resamples: int) -> dict:
    """A variant's NDCG@10 deltas to SASRec, overall and per slice: per-seed paired deltas on the users every run
    scored, their mean, the harness's interval, the verdict, and the user-only bootstrap for comparison."""
    mine, ref = [x["ranks"] for x in runs], [x["ranks"] for x in sasrec]
    r: dict = {}
    for where in (None, *SLICES):
        pre = f"{where}_" if where else ""
        diffs = paired_difference(mine, ref, mask=where, per_seed=True)
        users_only = list(paired_bootstrap(np.mean(diffs, axis=0), n_boot=resamples, seed=0))
        if len(diffs) > 1:
            iv = paired_interval_from_deltas(diffs, method, resamples=resamples)
        else:  # a screening run: no interval over seeds exists; the users' one, and no verdict
            iv = {"delta": float(np.mean(diffs[0])), "ci95": users_only, "per_seed_deltas": [float(np.mean(diffs[0]))],
                  "verdict": SCREENING}
        r |= {f"{pre}delta_vs_sasrec": iv["delta"], f"{pre}delta_vs_sasrec_ci95": iv["ci95"],
              f"{pre}delta_vs_sasrec_per_seed": iv["per_seed_deltas"], f"{pre}verdict": iv["verdict"],
              f"{pre}delta_vs_sasrec_ci95_users_only": users_only}
        if where is None:
            r["paired_users"] = int(diffs[0].size)
    scored = sorted({int(x["metrics"]["full"]["users"]) for x in (*runs, *sasrec)})
    if scored != [r["paired_users"]]:
        r["users_differ"] = (f"the deltas pair the {r['paired_users']:,} users every run scored; the means are over "
                             f"each run's own users ({', '.join(f'{n:,}' for n in scored)})")
    return r


def build_payload(args: argparse.Namespace, cfg, results: dict[str, list[dict]]) -> dict:
    """The results payload from every (seed, variant)'s run; SASRec (the reference) is ``results``' first entry."""
    models = {label: summarise(runs) for label, runs in results.items()}
    for label, runs in results.items():
        if label != "sasrec":
            models[label] |= compare(runs, results["sasrec"], args.interval, args.bootstrap)
            models[label]["relative_vs_sasrec"] = models[label]["delta_vs_sasrec"] / models["sasrec"]["NDCG@10_mean"]
    reference: dict[str, dict] = {}
    for run in (run for runs in results.values() for run in runs):  # seed-independent (WALS is fitted once)
        for ref, mr in run["references"].items():
            reference.setdefault(ref, {f"{w}:{n}": metric(mr, w, n) for w, n in HEADLINE})
    users = "all" if not cfg.eval.users else f"{cfg.eval.users} seeded (eval.users_seed={cfg.eval.users_seed})"
    return {"seeds": args.seeds, "ds": args.ds, "config": args.config, "overrides": args.sets, "dataset": cfg.dataset,
            "protocol": "leave-one-out; test phase; full ranking over all items with the user's train + valid items "
                        "excluded, ties counted against the target; sampled100: the stored negatives (seed "
                        f"{cfg.eval.negatives_seed}); users: {users}",
            "interval": interval_record(args.interval, resamples=args.bootstrap, reference="SASRec"),
            "bootstrap": {"resamples": args.bootstrap, "level": 0.95, "over": "users",
                          "pairing": "seed i of each model with seed i of SASRec; per-user difference averaged "
                                     "over seeds", "keys": "*_ci95_users_only (for comparison)"},
            "models": models, "references": reference,
            "settings": {k: {"chosen_on": v[0], "source": v[1]} for k, v in PROVENANCE.items()},
            "machine": machine()}


def reinterval(path: Path, suffix: str) -> int:
    """``--reinterval``: every delta's t-interval recomputed from ``path``'s per-seed figures (seed i of the model
    minus seed i of SASRec; every run scored the same users); the interval it had before kept as
    ``*_ci95_users_only`` when the file predates ``interval`` (then it was the user-only bootstrap); sources whose
    file has left the tree get ``in_git_at``; the settings' provenance as ``PROVENANCE`` words it now."""
    payload = json.loads(path.read_text())
    sasrec, before = payload["models"]["sasrec"], "interval" not in payload
    for label, r in payload["models"].items():
        if label == "sasrec":
            continue
        for where in (None, *SLICES):
            pre, key = (f"{where}_", f"{where}_NDCG@10") if where else ("", "NDCG@10")
            iv = paired_interval(r[f"{key}_per_seed"], sasrec[f"{key}_per_seed"], "t")
            if before:
                r[f"{pre}delta_vs_sasrec_ci95_users_only"] = r[f"{pre}delta_vs_sasrec_ci95"]
            r |= {f"{pre}delta_vs_sasrec_ci95": iv["ci95"], f"{pre}delta_vs_sasrec_per_seed": iv["per_seed_deltas"],
                  f"{pre}verdict": iv["verdict"]}
    payload["interval"] = interval_record("t", reference="SASRec") | {
        "from": f"the per-seed figures of the results file, every run having scored the same users, by "
                f"`python tests/benchmarks/baselines.py --reinterval {path}`"}
    if set(payload["settings"]) == set(PROVENANCE):  # the same settings: their provenance as worded now
        payload["settings"] = {k: {"chosen_on": v[0], "source": v[1]} for k, v in PROVENANCE.items()}
    for src in payload.get("sources", []):
        if not (ROOT / src["file"]).exists() and "in_git_at" not in src:
            src["in_git_at"] = last_commit_with(src["file"])
    write_results(f"baselines{suffix}", payload, *report(payload), meta=payload.get("meta"))
    return 0


def last_commit_with(path: str) -> str | None:
    """The short hash of the last commit whose tree holds ``path`` (the parent of the one that removed it)."""
    removed = subprocess.run(["git", "rev-list", "-n", "1", "HEAD", "--", path], cwd=ROOT, capture_output=True,
                             text=True).stdout.strip()
    if not removed:
        return None
    return subprocess.run(["git", "rev-parse", "--short", f"{removed}^"], cwd=ROOT, capture_output=True,
                          text=True).stdout.strip() or None


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__, home="/tmp/recpipe-baselines")
    p.add_argument("--variants", default="sasrec,grasp,grasp[metadata]", help=f"comma-separated, of {', '.join(VARIANTS)}; "
                   "sasrec (the reference) required")
    p.add_argument("--name", default="baselines", help="results/<name><suffix>.{json,md} (text_gain for issue 39's rows)")
    p.add_argument("--ds", default="2026-11-24")
    p.add_argument("--interval", default="t", choices=sorted(INTERVALS), help="t: Student t over the per-seed paired "
                   "deltas (default); two-level: bootstrap over seeds, then users")
    p.add_argument("--bootstrap", type=int, default=2000, help="resamples of the bootstrap intervals")
    p.add_argument("--fresh", action="store_true", help="train every run again, ignoring the records in HOME/baselines")
    p.add_argument("--merge", metavar="A.json,B.json", help="train nothing: write results/baselines<suffix> from "
                   "earlier results files whose SASRec runs are identical (each adds its other variants)")
    p.add_argument("--from-records", action="store_true", help="train nothing: the results from the finished runs "
                   "kept in HOME/baselines, whatever code made them (each names its commit)")
    p.add_argument("--reinterval", metavar="FILE.json", help="train nothing: recompute the intervals of FILE from "
                   "its per-seed figures into results/baselines<suffix>")
    args = p.parse_args(argv)
    if args.merge:
        return merge([Path(f) for f in args.merge.split(",")], args.suffix)
    if args.reinterval:
        return reinterval(Path(args.reinterval), args.suffix)
    home = Path(args.home)
    home.mkdir(parents=True, exist_ok=True)
    cfg = load_config(args.config, args.sets)  # the config is checked before anything runs
    labels = variant_order(VARIANTS, [v.strip() for v in args.variants.split(",")], "sasrec")  # checked first
    if not (args.skip_prepare or args.from_records):
        print("preparing the day (recpipe run --until neighbours) ...", flush=True)
        cli(home, args.ds, args.config, args.sets, "run", "--until", "neighbours", log=home / "baselines.log")
    results = run_variants(args.seeds, VARIANTS, labels, lambda seed, label, spec: train_one(args, seed, label, spec),
                           reference="sasrec")
    payload = build_payload(args, cfg, results)
    write_results(f"{args.name}{args.suffix}", payload, *report(payload))
    return 0


if __name__ == "__main__":
    sys.exit(main())
