"""A public dataset this project does not ship, run as a new user would: do the shipped settings travel?

    python tests/benchmarks/heldout_movielens.py [--configs pipelines/conf/amazon_beauty.yaml,pipelines/conf/sequences.yaml]

MovieLens-100k (943 users, 1,682 movies, 100,000 ratings; GroupLens, distributed inside the ``recbole`` wheel on
PyPI, which this script downloads with ``pip download`` into ``--work``) is converted to the sequence-file layout
(``sequences.txt`` in time order, ties in file order; ``items.tsv`` with the title and year, the genres as
attributes; ``users.tsv``) and run with each config as is, ``--set data.path=...`` plus the movie words of the
prompts and the describe budget below, exactly what a user trying recpipe on their data would type. Reported per
config: test NDCG@10 / HR@10 (full ranking), the slices and valid NDCG@10 of popularity, WALS, SASRec and GRASP,
and GRASP and WALS relative to SASRec. Results: ``results/heldout_ml100k<suffix>.{json,md}``.
"""
from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.benchmarks.common import day_args, machine, parser, recpipe, write_results  # noqa: E402

WHEEL = "recbole==1.2.1"
MEMBER = "recbole/dataset_example/ml-100k/ml-100k.{}"
MOVIE_WORDS = ["domain.item=movie", "domain.items=movies", "domain.user=viewer", "domain.catalogue=a film catalogue",
               "domain.shop=a film catalogue", "domain.history=ratings", "domain.categories=tags"]


def fetch(work: Path) -> dict[str, list[list[str]]]:
    """The three ml-100k files (header dropped) from the recbole wheel."""
    wheels = sorted(work.glob("recbole-*.whl"))
    if not wheels:
        subprocess.run([sys.executable, "-m", "pip", "download", WHEEL, "--no-deps", "-q", "-d", str(work)],
                       check=True)
        wheels = sorted(work.glob("recbole-*.whl"))
    out = {}
    with zipfile.ZipFile(wheels[-1]) as z:
        for kind in ("inter", "item", "user"):
            lines = z.read(MEMBER.format(kind)).decode("latin-1").splitlines()
            out[kind] = [line.split("\t") for line in lines[1:] if line.strip()]
    return out


def convert(raw: dict[str, list[list[str]]], root: Path) -> dict[str, int]:
    """The sequence-file layout of ``pipelines/conf/sequences.yaml``."""
    root.mkdir(parents=True, exist_ok=True)
    by_user: dict[str, list[tuple[float, int, str]]] = {}
    for n, (user, item, _rating, ts) in enumerate(raw["inter"]):
        by_user.setdefault(user, []).append((float(ts), n, item))
    users = sorted(by_user, key=int)
    with (root / "sequences.txt").open("w") as fh:
        for u in users:
            fh.write(" ".join([u, *[i for _, _, i in sorted(by_user[u])]]) + "\n")
    with (root / "items.tsv").open("w") as fh:
        fh.write("item_id\tasin\ttitle\tattributes\n")
        for item, title, year, genres in raw["item"]:
            label = f"{title} ({year})" if year else title
            fh.write(f"{item}\tml{item}\t{label}\t{'|'.join(genres.split())}\n")
    with (root / "users.tsv").open("w") as fh:
        fh.write("user_id\n" + "".join(f"{u}\n" for u in users))
    return {"users": len(users), "items": len(raw["item"]), "interactions": len(raw["inter"])}


def figures(m: dict) -> dict[str, float]:
    """The reported figures of one model's ``metrics.json`` entry."""
    return {"NDCG@10": m["full"]["NDCG@10"], "HR@10": m["full"]["HR@10"],
            "short_history_NDCG@10": m["slices"]["short_history"]["full"]["NDCG@10"],
            "tail_items_NDCG@10": m["slices"]["tail_items"]["full"]["NDCG@10"],
            "valid_NDCG@10": m["valid"]["full"]["NDCG@10"]}


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__, shared=("set", "suffix"))
    p.add_argument("--configs", default="pipelines/conf/amazon_beauty.yaml,pipelines/conf/sequences.yaml")
    p.add_argument("--work", default="/tmp/recpipe-heldout")
    p.add_argument("--ds", default="2026-11-24")
    p.add_argument("--describe-cap", type=int, default=300,
                   help="describe the N most popular items and N most active users (0: all; about 1 s a user on "
                        "2 cores); the rest get their metadata text, as the laptop default does")
    p.add_argument("--grasp-variant", action="append", default=[], metavar="LABEL=KEY=VALUE[,KEY=VALUE]",
                   help="after the configs: retrain GRASP alone in the first config's home with these overrides "
                        "(e.g. 'no text_init=train_sequential.grasp.text_init=0.0') and evaluate it")
    args = p.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    data = work / "ml-100k"
    stats = convert(fetch(work), data)
    print(f"ml-100k: {stats}", flush=True)
    sets = [f"data.path={data}", *MOVIE_WORDS, f"describe.max_items={args.describe_cap}",
            f"describe.max_users={args.describe_cap}", *args.sets]
    results: dict[str, dict] = {}
    training: dict[str, dict] = {}  # per config and model: the batch, best epoch and epochs run
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    for config in configs:  # each as a new user runs it
        results[config], trained = run_config(work, config, args.ds, sets)
        if trained:
            training[config] = trained
    for spec in args.grasp_variant:
        label, _, overrides = spec.partition("=")
        results[f"{configs[0]} + {label}"] = {"sasrec": results[configs[0]]["sasrec"],
                                              **grasp_variant(work, configs[0], args.ds, sets, label, overrides)}
    payload = {"dataset": "MovieLens-100k (from the recbole 1.2.1 wheel)", "stats": stats, "ds": args.ds,
               "overrides": sets, "results": results, "training": training, "machine": machine()}
    write_results(f"heldout_ml100k{args.suffix}", payload, *report(payload))
    return 0


def run_config(work: Path, config: str, ds: str, sets: list[str]) -> tuple[dict, dict]:
    """``recpipe run`` of every stage up to evaluate with ``config`` in its own home: every model's figures (and
    the run's wall seconds), and each sequential model's training figures."""
    home = work / Path(config).stem
    wall = recpipe(["run", *day_args(home, ds, config, sets), "--stages",
                    "ingest,validate,split,wals,describe,embed,neighbours,train_sequential,evaluate"],
                   work / "heldout.log")
    m = json.loads((home / "runs" / ds / "metrics.json").read_text())
    results = {name: figures(v) for name, v in m.items()}
    results["wall_seconds"] = round(wall, 1)
    training = {}
    for rec in sorted((home / "runs" / ds / "train_sequential").glob("*/result.json")):
        r = json.loads(rec.read_text())
        training[rec.parent.name] = {k: r.get(k) for k in (
            "batch_size", "best_epoch", "epochs_run", "epoch_seconds", "best_valid_NDCG@10")}
    print(f"{config}: " + ", ".join(f"{k} {v['NDCG@10']:.4f}" for k, v in results.items()
                                    if isinstance(v, dict)), flush=True)
    return results, training


def grasp_variant(work: Path, config: str, ds: str, sets: list[str], label: str, overrides: str) -> dict:
    """GRASP alone retrained in ``config``'s home with ``overrides`` (comma-separated) and evaluated."""
    extra = [*sets, "train_sequential.models=[grasp]", *[o for o in overrides.split(",") if o]]
    home = work / Path(config).stem
    for stage in ("train_sequential", "evaluate"):
        recpipe(["stage", stage, *day_args(home, ds, config, extra)], work / "heldout.log")
    v = json.loads((home / "runs" / ds / "metrics.json").read_text())["grasp"]
    res = json.loads((home / "runs" / ds / "train_sequential" / "grasp" / "result.json").read_text())
    print(f"{label}: grasp test NDCG@10 {v['full']['NDCG@10']:.4f}, valid {v['valid']['full']['NDCG@10']:.4f}",
          flush=True)
    return {"grasp": figures(v), "overrides": overrides, "grasp_best_epoch": res["best_epoch"],
            "grasp_epochs_run": res["epochs_run"]}


def report(payload: dict) -> tuple[list[tuple], list[str]]:
    """The table and notes of results/heldout_ml100k<suffix>.md, from the payload alone."""
    rows = [("config", "model", "NDCG@10", "HR@10", "short-history NDCG@10", "tail-items NDCG@10", "valid NDCG@10",
             "vs SASRec")]
    for config, r in payload["results"].items():
        base = r.get("sasrec", {}).get("NDCG@10")
        for name, v in r.items():
            if not isinstance(v, dict):
                continue
            rel = f"{v['NDCG@10'] / base - 1:+.1%}" if base else "-"
            rows.append((config, name, *[f"{v[k]:.4f}" for k in ("NDCG@10", "HR@10", "short_history_NDCG@10",
                                                                   "tail_items_NDCG@10", "valid_NDCG@10")], rel))
    notes = [f"MovieLens-100k: {payload['stats']}; leave-one-out in time order; full ranking, history excluded; seed 42",
             f"every config run as shipped with: {' '.join('--set ' + s for s in payload['overrides'])}"]
    notes += [f"{config} {name}: " + ", ".join(f"{k} {v}" for k, v in r.items() if v is not None)
              for config, t in payload.get("training", {}).items() for name, r in t.items()]
    return rows, notes


if __name__ == "__main__":
    sys.exit(main())
