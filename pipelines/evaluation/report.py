"""``runs/<ds>/report.md`` with PNG plots: what a reviewer reads before promoting."""
from __future__ import annotations

import numpy as np

from pipelines.context import StageContext
from pipelines.evaluation.protocol import EvalData, random_baseline


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
    lines += [f"![NDCG@10 by slice]({plots[0]})", "", f"![history lengths]({plots[1]})", ""]
    (ctx.run_dir / "report.md").write_text("\n".join(lines))
