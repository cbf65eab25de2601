"""Nightly replay on the dated Beauty feed (issue 38): products first seen on each day of a week, ranked by that
night's model from their first night on, the ID-only model against its day-one paths.

    python tests/benchmarks/new_items_replay.py --config pipelines/conf/amazon_beauty.yaml \
        --set data.path=../shared/datasets/amazon-beauty [--first 2014-07-01] [--days 7] [--variants id,text] \
        [--cache-from /tmp/recpipe-bench-cold-latest/cache]

Each variant has a home of its own (``HOME-<variant>``) and lives the week night by night, as the nightly DAG does:
night 0 (the day before ``--first``) trains in full, every later night runs ``recpipe run --ds D --until
train_sequential`` with ``refresh.mode=incremental`` (WALS from the night before, SASRec fine-tuned for
``refresh.finetune_epochs`` epochs from the night before's weights, a row added for each new item, new texts
embedded), the data being every interaction dated on or before D (``interactions.tsv``). Text: item metadata only
(``embed.sources=[metadata]``, no LLM descriptions); SASRec with the section's settings (``per_model={}``).
``--cache-from`` copies an earlier home's embedding cache (the texts are the same, so night 0 skips re-embedding).

Measured, for each night D: the items whose first interaction is dated D (new that night), and every later
interaction with one of them (dated after D, to the end of the feed) by a user the night knew who had not bought
it by D (first purchases, not repeats): the rank of that
item among all of night D's items in that user's scores on night D (the model's forward pass over the user's whole
history up to D, as a request with its history is served; the history's items excluded). Rows:

* ``sasrec_id_only`` (variant ``id``): the night's SASRec as trained; a new item's row saw only what its first day
  put into training (the leave-one-out split holds each user's last item out);
* ``sasrec_fill_in`` (variant ``id``): the same model, each new item's row replaced by the mean of the rows of its
  5 most text-similar older items with a trained row (``features.cold_start.fill_in``), the kNN fill-in day-one
  path (computed here from the night's artifacts: the pipeline serves it only for ``split.cold_items``' held-out
  items);
* ``sasrec_text`` (variant ``text``): SASRec with text-aware items (``sasrec.items.source=text``, ``id_dropout``
  0.5, ``models/items.py``): a new item starts at its text's vector, delta 0, and is fine-tuned from there.

Reported per row: events, HR@10, NDCG@10, HR@100, MRR, median rank; the MRR and HR@100 differences against
``sasrec_id_only`` on the same events with 95% bootstrap intervals over the new items, each with all its events
(one seed: there is one feed; a
product a week old is rarely in anyone's top 10, so the rank-wide measures carry the comparison). Results:
``results/new_items_replay.{json,md}``.
"""
from __future__ import annotations

import shutil
import sys
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from features.cold_start import fill_in  # noqa: E402
from features.embeddings import vectors_of  # noqa: E402
from jobs import warehouse  # noqa: E402
from pipelines.config import load_config  # noqa: E402
from pipelines.context import StageContext  # noqa: E402
from pipelines.evaluation.cold_start import trained_items  # noqa: E402
from pipelines.evaluation.data import load_eval_data  # noqa: E402
from pipelines.serving import Forward  # noqa: E402
from tests.benchmarks.common import BEAUTY_DATA, day_args, machine, parser, recpipe, write_results  # noqa: E402

PROTOCOL = ["embed.sources=[metadata]", "train_sequential.text_source=metadata", "describe.entities=[]",
            "train_sequential.per_model={}", "train_sequential.models=[sasrec]", "refresh.mode=incremental",
            "refresh.full_every_days=30"]
VARIANTS = {"id": [], "text": ["train_sequential.sasrec.items.source=text",
                               "train_sequential.sasrec.items.id_dropout=0.5"]}
ROWS = {"sasrec_id_only": ("id", False), "sasrec_fill_in": ("id", True), "sasrec_text": ("text", False)}
RESAMPLES = 2000


def nights(first: str, days: int) -> list[str]:
    """Night 0 (the day before ``first``) and the ``days`` nights from ``first``."""
    d0 = date.fromisoformat(first)
    return [str(d0 + timedelta(days=i)) for i in range(-1, days)]


def live(home: Path, args, sets: list[str], days: list[str]) -> None:
    """Run every night (a night already run, with its model, is kept)."""
    home.mkdir(parents=True, exist_ok=True)
    if args.cache_from and not (home / "cache").exists():
        shutil.copytree(args.cache_from, home / "cache", ignore=shutil.ignore_patterns("*.lock"))
    for ds in days:
        if (home / "runs" / ds / "train_sequential" / "sasrec" / "forward").exists():
            continue
        t = recpipe(["run", "--until", "train_sequential", *day_args(home, ds, args.config, sets)], home / "replay.log")
        print(f"{home.name} {ds}: {t:.0f} s", flush=True)


def feed(data: Path) -> pd.DataFrame:
    """The dated interactions, as strings, in the file's order (each user's events oldest first)."""
    return pd.read_csv(data / "interactions.tsv", sep="\t", dtype=str)


def events(inter: pd.DataFrame, ds: str) -> pd.DataFrame:
    """Later interactions (after ``ds``) with the items first seen on ``ds``, by users with a history by then that
    does not hold the item already (a first purchase of it, not a repeat)."""
    first = inter.groupby("item_id")["date"].min()
    new = set(first.index[first == ds])
    past = inter[inter["date"] <= ds]
    later = inter[(inter["date"] > ds) & inter["item_id"].isin(new) & inter["user_id"].isin(set(past["user_id"]))]
    had = set(zip(past["user_id"], past["item_id"], strict=True))
    first_time = np.array([(u, i) not in had for u, i in zip(later["user_id"], later["item_id"], strict=True)], bool)
    later = later[first_time]
    return later.drop_duplicates(["user_id", "item_id"])


def night_ranks(home: Path, inter: pd.DataFrame, ds: str, fill: bool, args_config: str | None,
                sets: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The rank (0 = top) of each of night ``ds``'s events' item in its user's scores of that night (``args_config``
    and ``sets``: the home's config, for the night's training data when ``fill``)."""
    imap = warehouse.read_arrow(home, "item_map", ds).to_pandas()
    idx = dict(zip(imap["item_id"], imap["item_idx"], strict=True))
    ev = events(inter, ds)
    ev = ev[ev["item_id"].isin(idx)]                # a new item the night's split left out (every user too short)
    if ev.empty:
        return np.zeros(0, np.int64), np.zeros(0, object)
    d = home / "runs" / ds / "train_sequential" / "sasrec"
    items = np.load(d / "vectors.npz")["items"]
    first = inter.groupby("item_id")["date"].min()
    new = np.asarray([idx[i] for i in first.index[first == ds] if i in idx], np.int64)
    rows = None
    if fill:  # donors: older items with a trained row (an interaction in the night's training part)
        vec, tidx, _ = vectors_of(warehouse.read_arrow(home, "text_embeddings", ds), "item", "metadata")
        text = np.zeros((len(items), vec.shape[1]), np.float32)
        text[tidx[tidx < len(items)]] = vec[tidx < len(items)]
        data, _, _ = load_eval_data(StageContext(load_config(args_config, sets), ds, home))
        donors = np.setdiff1d(trained_items(data, items, "valid"), new)
        items, rows = fill_in(items, text, new, donors)[0], new
    model = Forward(d / "forward", items, rows)
    past = inter[inter["date"] <= ds]
    hist = {u: np.asarray([idx[i] for i in g if i in idx], np.int64) for u, g in past.groupby("user_id")["item_id"]}
    seqs = [hist[u] for u in ev["user_id"]]
    scores = model.scores(seqs, np.full(len(seqs), -1))                     # (E, N + 1)
    target = np.asarray([idx[i] for i in ev["item_id"]], np.int64)
    out = []
    for s, h, t in zip(scores, seqs, target, strict=True):
        s = s.astype(np.float64)
        s[0], s[h] = -np.inf, -np.inf                # the history (never the target: events are first purchases)
        out.append(int((s >= s[t]).sum()) - 1)         # ties count against the target, as in the protocol
    return np.asarray(out, np.int64), ev["item_id"].to_numpy()


PER_EVENT = {"NDCG@10": lambda r: np.where(r < 10, 1 / np.log2(r + 2), 0.0), "HR@10": lambda r: (r < 10) * 1.0,
             "HR@100": lambda r: (r < 100) * 1.0, "MRR": lambda r: 1 / (r + 1)}


def figures(ranks: np.ndarray) -> dict:
    return {"events": int(len(ranks)), **{k: float(f(ranks).mean()) for k, f in PER_EVENT.items()},
            "median_rank": float(np.median(ranks)) if len(ranks) else float("nan")}


def delta_interval(a: np.ndarray, b: np.ndarray, metric: str, items: np.ndarray, seed: int = 0) -> list[float]:
    """95% bootstrap interval of the mean ``metric`` difference ``a - b`` (ranks of the same events), resampling
    the new items (``items``: each event's), each with all its events: one item's buyers are not independent."""
    d = PER_EVENT[metric](a) - PER_EVENT[metric](b)
    if len(d) == 0:
        return [float("nan"), float("nan")]
    labels, cluster = np.unique(items.astype(str), return_inverse=True)
    sums, counts = np.bincount(cluster, d, len(labels)), np.bincount(cluster, minlength=len(labels))
    pick = np.random.default_rng(seed).integers(0, len(labels), (RESAMPLES, len(labels)))
    boot = sums[pick].sum(1) / np.maximum(counts[pick].sum(1), 1)
    return [float(np.quantile(boot, 0.025)), float(np.quantile(boot, 0.975))]


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__, shared=("config", "set", "home", "suffix"), home="/tmp/recpipe-bench-replay")
    ap.add_argument("--first", default="2014-07-01", help="the first night whose new items are followed")
    ap.add_argument("--days", type=int, default=7, help="how many nights from --first")
    ap.add_argument("--variants", default="id,text", help=f"comma list of {', '.join(VARIANTS)}")
    ap.add_argument("--cache-from", default="", help="an earlier home's cache/ to copy (same texts: no re-embedding)")
    args = ap.parse_args(argv)
    days, variants = nights(args.first, args.days), args.variants.split(",")
    if unknown := [v for v in variants if v not in VARIANTS]:
        sys.exit(f"--variants: {unknown} unknown; known: {', '.join(VARIANTS)}")
    data = next((Path(s.split("=", 1)[1]) for s in args.sets if s.startswith("data.path=")), BEAUTY_DATA)
    inter = feed(data)
    for v in variants:
        live(Path(f"{args.home}-{v}"), args, [*PROTOCOL, *VARIANTS[v], *args.sets], days)
    ranks = {row: {ds: night_ranks(Path(f"{args.home}-{v}"), inter, ds, fill, args.config,
                                   [*PROTOCOL, *VARIANTS[v], *args.sets]) for ds in days[1:]}
             for row, (v, fill) in ROWS.items() if v in variants}
    joined = {row: np.concatenate([r[ds][0] for ds in days[1:]]) for row, r in ranks.items()}
    items = np.concatenate([next(iter(ranks.values()))[ds][1] for ds in days[1:]])
    models = {row: figures(r) | {"per_night_events": {ds: int(len(x[0])) for ds, x in ranks[row].items()}}
              for row, r in joined.items()}
    for row in [r for r in models if r != "sasrec_id_only" and "sasrec_id_only" in models]:
        for k in ("MRR", "HR@100"):
            models[row] |= {f"{k}_delta_vs_sasrec_id_only": models[row][k] - models["sasrec_id_only"][k],
                            f"{k}_delta_vs_sasrec_id_only_ci95": delta_interval(joined[row], joined["sasrec_id_only"], k,
                                                                                        items)}
    payload = {"dataset": "amazon-beauty", "nights": days[1:], "models": models, "machine": machine(),
               "protocol": "dated feed, each night's model; later interactions with the items first seen that night"}
    rows = [("model", "events", "HR@10", "NDCG@10", "HR@100", "MRR", "median rank",
             "MRR delta vs ID-only [95% CI]", "HR@100 delta vs ID-only [95% CI]")]
    for name, m in models.items():
        rows.append((name, str(m["events"]), *(f"{m[k]:.4f}" for k in ("HR@10", "NDCG@10", "HR@100", "MRR")),
                     f"{m['median_rank']:.0f}", ci(m, "MRR"), ci(m, "HR@100")))
    notes = [f"nights {days[1]}..{days[-1]} (night 0 {days[0]} trained in full, the others incremental); one feed, "
             "one seed (42): the intervals resample the new items (each with all its later buyers)", f"new items followed: {len(ranks_items(inter, days))}",
             "text: item metadata only; SASRec with the section's settings"]
    write_results(f"new_items_replay{args.suffix}", payload, rows, notes)
    return 0


def ci(m: dict, k: str) -> str:
    """``+d [lo, hi]`` of metric ``k``'s difference against the ID-only row, or ``-``."""
    if f"{k}_delta_vs_sasrec_id_only" not in m:
        return "-"
    lo, hi = m[f"{k}_delta_vs_sasrec_id_only_ci95"]
    return f"{m[f'{k}_delta_vs_sasrec_id_only']:+.4f} [{lo:+.4f}, {hi:+.4f}]"


def ranks_items(inter: pd.DataFrame, days: list[str]) -> list[str]:
    """The items first seen on the followed nights."""
    first = inter.groupby("item_id")["date"].min()
    return sorted(first.index[first.isin(days[1:])])


if __name__ == "__main__":
    sys.exit(main())
