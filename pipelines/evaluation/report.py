"""``runs/<ds>/report.md`` with PNG plots: what a reviewer reads before promoting."""
from __future__ import annotations

import numpy as np

from pipelines.context import StageContext
from pipelines.evaluation.protocol import EvalData, random_baseline
from pipelines.summary import read_json, successful_days


def _plots(ctx: StageContext, metrics: dict, data: EvalData) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted(metrics)
    groups = ["all", "short_history", "tail_items"]
    fig, ax = plt.subplots(figsize=(6, 3.2))
    width = 0.8 / max(len(names), 1)
    for j, m in enumerate(names):
        vals = [metrics[m]["full"]["NDCG@10"]] + [metrics[m]["slices"][g]["full"]["NDCG@10"] for g in groups[1:]]
        ax.bar(np.arange(len(groups)) + j * width, vals, width, label=m)
    ax.set_xticks(np.arange(len(groups)) + 0.4 - width / 2, groups)
    ax.set_ylabel("test NDCG@10 (full ranking)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(ctx.run_dir / "ndcg_by_slice.png", dpi=100)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 3.2))
    lens = data.history("test").lengths()
    ax.hist(lens[data.test > 0], bins=np.arange(0, min(lens.max(), 100) + 2), color="gray")
    ax.set_xlabel("history length (train + valid)")
    ax.set_ylabel("users")
    fig.tight_layout()
    fig.savefig(ctx.run_dir / "history_lengths.png", dpi=100)
    plt.close(fig)
    return ["ndcg_by_slice.png", "history_lengths.png"]


def write(ctx: StageContext, metrics: dict, data: EvalData) -> None:
    plots = _plots(ctx, metrics, data)
    ks = ctx.cfg.eval.ks
    cols = [f"HR@{k}" for k in ks] + [f"NDCG@{k}" for k in ks] + ["MRR"]
    lines = [f"# recpipe report: {ctx.cfg.dataset}, ds={ctx.ds}", "",
             f"{data.n_users} users, {data.n_items} items. Leave-one-out; test targets; history = train + valid "
             f"(popularity and factor models refit on train + valid). Seed {ctx.cfg.seed}, negatives seed "
             f"{ctx.cfg.eval.negatives_seed}. Ties count against the target.", ""]
    protos = [("full", "Full ranking (user history excluded)", ""),
              (f"sampled{ctx.cfg.eval.n_negatives}", f"{ctx.cfg.eval.n_negatives} sampled negatives", "")]
    for n in ctx.cfg.eval.candidates:
        rnd = {k: random_baseline(n, k) for k in ks}
        protos.append((f"cand{n}", f"{n} candidates (the target and {n - 1} of the stored negatives)",
                       "A random ranking scores " + ", ".join(f"HR@{k} {rnd[k][f'HR@{k}']:.4f}, NDCG@{k} "
                                                              f"{rnd[k][f'NDCG@{k}']:.4f}" for k in ks)
                       + ": read these figures against it.\n"))
    for proto, title, note in protos:
        lines += [f"## {title}", "", *([note] if note else []), "| model | slice | users | " + " | ".join(cols) + " |",
                  "|---|---|---|" + "---|" * len(cols)]
        for m in sorted(metrics):
            rows = [("all", metrics[m][proto])] + [(s, v[proto]) for s, v in metrics[m]["slices"].items()]
            for s, v in rows:
                lines.append(f"| {m} | {s} | {v['users']} | " + " | ".join(f"{v[c]:.4f}" for c in cols) + " |")
        lines.append("")
    lines += cold_section(ctx, metrics)
    lines += [f"![NDCG@10 by slice]({plots[0]})", "", f"![history lengths]({plots[1]})", ""]
    lines += day_over_day(ctx, metrics)
    (ctx.run_dir / "report.md").write_text("\n".join(lines))


def cold_section(ctx: StageContext, metrics: dict) -> list[str]:
    """The cold-item groups (``split.cold_items``): full ranking of cold-test and warm-test users, the cold-only
    diagnostic, the cold share of warm users' top 10, and the cold-valid users' valid figure; [] when off."""
    if not any("cold" in m for m in metrics.values()):
        return []
    ks = [k for k in ctx.cfg.eval.ks if k in (10, 20)] or list(ctx.cfg.eval.ks)
    cols = [f"{m}@{k}" for k in ks for m in ("HR", "NDCG")]
    s = ctx.cfg.split
    lines = ["## Cold items", "", f"{s.cold_items:.0%} of items held out of training (`split.cold_by={s.cold_by}`, "
             f"seed {s.cold_seed}), half cold-valid, half cold-test. Full ranking over all items, history excluded. "
             "`cold`: test target cold (history without cold items); `warm`: the other test users; `cold only`: "
             "the cold users' target ranked among the cold items alone; `cold in top 10`: the cold items' share of "
             "warm users' top 10 (against their share of the catalogue); `valid cold`: cold-valid users, the group "
             "choices are made on.", "",
             "| model | group | users | " + " | ".join(cols) + " |", "|---|---|---|" + "---|" * len(cols)]
    for name in sorted(metrics):
        m = metrics[name]
        if "cold" not in m:
            continue
        rows = [("cold", m["cold"]["full"]), ("cold only", m["cold"]["cold_only"]), ("warm", m["warm"]["full"])]
        rows += [("valid cold", m["valid"]["cold"]["full"])] if "cold" in m.get("valid", {}) else []
        for group, v in rows:
            lines.append(f"| {name} | {group} | {v['users']} | " + " | ".join(f"{v[c]:.4f}" for c in cols) + " |")
    return [*lines, "", *_cold_shares(metrics), ""]


def _cold_shares(metrics: dict) -> list[str]:
    """The over-promotion check: the cold items' share of warm users' top 10 beside their share of the catalogue."""
    lines = ["| model | cold in top 10 | cold share of the catalogue | warm users | cold users dropped |",
             "|---|---|---|---|---|"]
    for name in sorted(n for n in metrics if "cold" in metrics[n]):
        t, dropped = metrics[name]["warm"]["cold_share_top10"], metrics[name]["cold"].get("users_dropped")
        lines.append(f"| {name} | {t['share']:.4f} | {t['catalogue']:.4f} | {t['users']} | "
                     f"{'-' if dropped is None else dropped} |")
    return lines


def _recomputed(stages: dict) -> str:
    """One cell: what the refresh of a day recomputed and reused, from its stage records."""
    out = []
    w = (stages.get("wals") or {}).get("refresh", {}).get("final_fit")
    if w:
        out.append(f"wals warm from {w['base']}: {w['users_carried']} users and {w['items_carried']} items carried, "
                   f"{w['users_new']} and {w['items_new']} new, {w['iterations']} sweeps" if w.get("warm")
                   else f"wals cold ({w.get('iterations', '?')} sweeps)")
    d = (stages.get("describe") or {}).get("refresh")
    if d:
        out.append(f"describe: {d['recomputed'].get('item', 0)} items and {d['recomputed'].get('user', 0)} users "
                   f"regenerated, {d['reused']} reused")
    t = (stages.get("train_sequential") or {}).get("refresh")
    if t:
        out.append("; ".join(f"{m} {'fine-tuned' if r.get('warm') else 'trained'} ({r.get('epochs')} epochs max)"
                             for m, r in t.items() if isinstance(r, dict)))
    q = (stages.get("train_llmrec") or {}).get("refresh")
    if q:
        out.append("llmrec " + ("fine-tuned" if q.get("warm") else "trained"))
    return "; ".join(out) or "-"


def _decisions(ctx: StageContext, models: list[str], days: list[str]) -> list[dict]:
    """Promotion decisions of the window's days, from the registry (none when it cannot be read)."""
    from pipelines.registry import configured_uri

    if not configured_uri(ctx.cfg) and not (ctx.home / "mlflow" / "mlflow.db").exists():
        return []  # nothing registered in this home yet
    try:
        from pipelines.registry import decisions

        found = []
        for m in models:
            found += [{**d, "model": m} for d in decisions(ctx.cfg, ctx.home, m) if d.get("ds") in days]
        return sorted(found, key=lambda d: d.get("time", ""))
    except Exception:  # noqa: BLE001 - a report must not fail on a registry it cannot read (first day, offline)
        return []


def day_over_day(ctx: StageContext, metrics: dict, n: int | None = None) -> list[str]:
    """The report's day-over-day view: this day and the successful days before it (``eval.report_days`` in all):
    test NDCG@10 per model, stage seconds, what each refresh recomputed, the promotion decisions."""
    n = n or ctx.cfg.eval.report_days
    earlier = [d for d in successful_days(ctx.home) if d < ctx.ds][-(n - 1):] if n > 1 else []
    days = [*earlier, ctx.ds]
    sums = {d: read_json(ctx.home / "runs" / d / "summary.json") for d in earlier}
    sums[ctx.ds] = {**read_json(ctx.run_dir / "summary.json"), "metrics": metrics}
    models = sorted({m for s in sums.values() for m in (s.get("metrics") or {})})
    stages = list(dict.fromkeys(st for d in days for st in (sums[d].get("stages") or {})))
    lines = [f"## Day over day (the last {len(days)} days)", "", "Test NDCG@10 (full ranking):", "",
             "| day | " + " | ".join(models) + " |", "|---|" + "---|" * len(models)]
    for d in days:
        m = sums[d].get("metrics") or {}
        lines.append(f"| {d} | " + " | ".join(f"{m[x]['full']['NDCG@10']:.4f}" if x in m else "-" for x in models)
                     + " |")
    lines += ["", "Stage seconds (this day: the stages before evaluate):", "",
              "| day | " + " | ".join(stages) + " | total |", "|---|" + "---|" * (len(stages) + 1)]
    for d in days:
        st = sums[d].get("stages") or {}
        secs = [st[x]["seconds"] if x in st and st[x].get("seconds") is not None else None for x in stages]
        lines.append(f"| {d} | " + " | ".join("-" if v is None else f"{v:.1f}" for v in secs)
                     + f" | {sum(v for v in secs if v is not None):.1f} |")
    lines += ["", "What was recomputed:", "", "| day | refresh | recomputed and reused |", "|---|---|---|"]
    for d in days:
        plan = read_json(ctx.home / "runs" / d / "refresh.json")
        lines.append(f"| {d} | {plan.get('mode', 'full')} | {_recomputed(sums[d].get('stages') or {})} |")
    found = _decisions(ctx, models, days)
    lines += ["", "Promotion decisions on these days:", ""]
    if found:
        lines += ["| time | model | action | decision | champion now | reason |", "|---|---|---|---|---|---|"]
        lines += [f"| {d.get('time')} | {d['model']} | {d.get('action', 'promote')} | {d['decision']} | "
                  f"v{d.get('champion_after', d.get('version'))} | {d['reason']} |" for d in found]
    else:
        lines.append("none recorded")
    return [*lines, ""]
