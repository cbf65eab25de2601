"""RecBole 1.2.1's SASRec against recpipe's on Amazon Beauty, in the same run: CPU seconds per epoch, valid NDCG@10.

Both train SASRec with the CE loss over all items, max length 50, batch 256, 2 layers, 2 heads, hidden 64, on the
same leave-one-out split (RecBole splits the same sequences itself: ``LS: valid_and_test``, ordered by position) and
are scored on valid by full ranking. recpipe runs the real ``train_sequential`` stage (``models=[sasrec]``, the
``amazon_beauty.yaml`` settings) in a hard-linked copy of the bench home; RecBole runs in a subprocess with its
documented defaults for SASRec except the shared settings above. Each trains ``--epochs`` epochs without early
stopping; the report compares seconds per epoch, valid NDCG@10 at equal epochs and, from recpipe's converged run
in beauty_sequential.json, the training time recpipe needs to reach RecBole's last valid NDCG@10.

RecBole is not a recpipe dependency: ``tests/benchmarks/requirements-recbole.txt`` pins it and the few packages its
SASRec path imports; they are installed ``--no-deps`` into ``HOME/recbole-site``, which is appended to the
subprocess's ``sys.path`` so recpipe's own torch, numpy and pandas are the ones used.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.benchmarks.common import (  # noqa: E402
    BEAUTY_DS,
    RESULTS,
    ROOT,
    machine,
    parser,
    prepare_beauty,
    sasrec_in_copy,
    write_results,
)

REQUIREMENTS = Path(__file__).resolve().parent / "requirements-recbole.txt"


def install_recbole(site: Path) -> None:
    stamp = site / ".installed"
    if stamp.exists() and stamp.read_text() == REQUIREMENTS.read_text():
        return
    shutil.rmtree(site, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "-q", "--no-deps",
                    "--target", str(site), "-r", str(REQUIREMENTS)], check=True)
    stamp.write_text(REQUIREMENTS.read_text())


def write_atomic(sequences: Path, out_dir: Path) -> tuple[int, int]:
    """Beauty's ``sequences.txt`` (user, then items oldest first) as RecBole's ``beauty.inter``.

    Returns the rows written and the users with at least two training items (recpipe's training rows).

    The timestamp is the position in the sequence, so RecBole's time-ordered leave-one-out split holds out the same
    last two items as ours.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    n = users = 0
    with open(sequences) as src, open(out_dir / "beauty.inter", "w") as dst:
        dst.write("user_id:token\titem_id:token\ttimestamp:float\n")
        for line in src:
            user, *items = line.split()
            users += len(items) >= 4  # valid and test hold out the last two
            for t, item in enumerate(items):
                dst.write(f"{user}\t{item}\t{t}\n")
                n += 1
    return n, users


def recbole_worker(data_dir: str, epochs: int, seed: int, batch: int, out: str) -> None:
    """Runs in the subprocess: RecBole's own data pipeline, SASRec and Trainer, timing each epoch's training."""
    import numpy as np
    import torch

    # RecBole 1.2.1's Config.compatibility_settings aliases np.float = np.float_ etc., names NumPy 2 removed:
    # give it the NumPy 2 spellings of the same types so its shim runs (nothing else in RecBole's SASRec path
    # needs them).
    np.float_, np.complex_, np.unicode_ = np.float64, np.complex128, np.str_
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.model.sequential_recommender import SASRec
    from recbole.trainer import Trainer
    from recbole.utils import init_seed

    params = {"data_path": str(Path(data_dir).parent), "dataset": Path(data_dir).name,
              "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
              "MAX_ITEM_LIST_LENGTH": 50, "loss_type": "CE", "train_neg_sample_args": None,
              "train_batch_size": batch, "eval_batch_size": 4096, "hidden_size": 64, "inner_size": 256,
              "n_layers": 2, "n_heads": 2, "epochs": epochs, "eval_step": 1, "stopping_step": 10 ** 6,
              "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "full", "group_by": "user"},
              "metrics": ["Hit", "NDCG"], "topk": [10], "valid_metric": "NDCG@10", "use_gpu": False,
              "seed": seed, "reproducibility": True, "show_progress": False, "log_wandb": False,
              "checkpoint_dir": str(Path(out).parent / "saved")}
    t0 = time.perf_counter()
    config = Config(model="SASRec", dataset=Path(data_dir).name, config_dict=params)
    init_seed(config["seed"], config["reproducibility"])
    train_data, valid_data, _ = data_preparation(config, create_dataset(config))
    prep = time.perf_counter() - t0
    model = SASRec(config, train_data.dataset)
    history: list[dict] = []

    class Timed(Trainer):
        def _train_epoch(self, *a, **k):
            t = time.perf_counter()
            loss = super()._train_epoch(*a, **k)
            history.append({"epoch": len(history) + 1, "loss": float(loss), "seconds": time.perf_counter() - t})
            return loss

        def _valid_epoch(self, *a, **k):
            t = time.perf_counter()
            score, result = super()._valid_epoch(*a, **k)
            history[-1].update({"valid_NDCG@10": float(result["ndcg@10"]), "valid_HR@10": float(result["hit@10"]),
                                "eval_seconds": time.perf_counter() - t})
            return score, result

    Timed(config, model).fit(train_data, valid_data, saved=False, show_progress=False)
    Path(out).write_text(json.dumps({"history": history, "prepare_seconds": prep, "torch_threads":
                                     torch.get_num_threads(), "train_rows": len(train_data.dataset),
                                     "parameters": sum(p.numel() for p in model.parameters())}))


def report(payload: dict) -> None:
    """The .md table and notes from the payload (and, for convergence, recpipe's full run in beauty_sequential)."""
    ours, rb, meta = payload["recpipe"], payload["recbole"], payload["_meta"]
    ours_s, rb_s, batch = ours["epoch_seconds"], rb["epoch_seconds"], meta["batch_size"]
    rows = [("epoch", "recpipe s (train)", "recpipe valid NDCG@10", "RecBole s (train)", "RecBole valid NDCG@10")]
    for a, b in zip(ours["history"], rb["history"], strict=True):
        rows.append((str(a["epoch"]), f"{a['seconds']:.1f}", f"{a['valid_NDCG@10']:.4f}", f"{b['seconds']:.1f}",
                     f"{b['valid_NDCG@10']:.4f}"))
    notes = [f"seconds per epoch (training only, mean of {meta['epochs']}): recpipe {ours_s}, RecBole 1.2.1 {rb_s}: "
             f"RecBole takes {rb_s / ours_s:.1f}x as long",
             f"an epoch is the same targets for both (every prefix of every training sequence), but RecBole feeds "
             f"them as {rb['train_rows']:,} augmented rows, {-(-rb['train_rows'] // batch)} optimizer steps per epoch, "
             f"against one row per user for recpipe ({ours['train_rows']:,} rows, {-(-ours['train_rows'] // batch)} steps), so "
             f"RecBole is ahead per epoch and far behind per second",
             f"RecBole data preparation {rb['prepare_seconds']:.0f} s (not in its epochs); torch threads "
             f"{rb['torch_threads']}; parameters recpipe {ours['parameters']:,}, RecBole {rb['parameters']:,}",
             f"seed {meta['seed']}; {meta['protocol']}; RecBole {meta['recbole']}",
             f"recpipe: `{ours['command']}`"]
    full = RESULTS / "beauty_sequential.json"
    if full.exists():  # recpipe's converged run (same machine, an earlier run with the same settings)
        hist = json.loads(full.read_text())["sasrec"]["history"]
        rb_best = max(rb["history"], key=lambda h: h["valid_NDCG@10"])  # RecBole's best epoch so far
        target, n_rb = rb_best["valid_NDCG@10"], len(rb["history"])
        reach = next((h for h in hist if h["valid_NDCG@10"] >= target), None)
        best = max(hist, key=lambda h: h["valid_NDCG@10"])
        rb_state = ("RecBole was still improving at its last epoch, so its converged valid NDCG@10 is not measured "
                    "here" if rb_best["epoch"] == n_rb else f"RecBole peaked at epoch {rb_best['epoch']} of {n_rb}")
        head = f"RecBole's best valid NDCG@10 in {n_rb} epochs ({target:.4f}, epoch {rb_best['epoch']})"
        if reach:
            spent = sum(h["seconds"] for h in hist if h["epoch"] <= reach["epoch"])
            notes.append(f"recpipe's full run (beauty_sequential.json) passes {head} at epoch {reach['epoch']}, "
                         f"after {spent:.0f} s of training (RecBole: "
                         f"{sum(h['seconds'] for h in rb['history'][:rb_best['epoch']]):.0f} s), and converges at "
                         f"{best['valid_NDCG@10']:.4f} (epoch {best['epoch']}); {rb_state}")
        else:
            notes.append(f"recpipe's full run (beauty_sequential.json) converges at {best['valid_NDCG@10']:.4f} "
                         f"(epoch {best['epoch']}), below {head}; {rb_state}")
    write_results("recbole_sasrec", payload, rows, notes)


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__, shared=("data", "home"))
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--report-only", action="store_true", help="rewrite the .md from the last results .json")
    args = ap.parse_args(argv)
    if args.report_only:
        report(json.loads((RESULTS / "recbole_sasrec.json").read_text()))
        return 0

    ctx = prepare_beauty(args.data, args.home, [])
    ours = sasrec_in_copy(ctx, args.data, args.epochs, "recbole-cmp")
    batch = ctx.cfg.train_sequential.for_model("sasrec").train.batch_size

    site = ctx.home / "recbole-site"
    install_recbole(site)
    work = ctx.home / "recbole"
    shutil.rmtree(work, ignore_errors=True)
    rows_written, train_users = write_atomic(Path(args.data) / "sequences.txt", work / "beauty")
    out_json = work / "result.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    code = (f"import sys; sys.path.append({str(site)!r}); "
            f"from tests.benchmarks.bench_recbole import recbole_worker; "
            f"recbole_worker({str(work / 'beauty')!r}, {args.epochs}, {ctx.cfg.seed}, {batch}, {str(out_json)!r})")
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, cwd=work, env=env)
    rb = json.loads(out_json.read_text())
    rb["wall_seconds"] = round(time.perf_counter() - t0, 1)

    def per_epoch(h: list[dict]) -> float:
        return round(sum(e["seconds"] for e in h) / len(h), 2)

    ours_s, rb_s = per_epoch(ours["history"]), per_epoch(rb["history"])
    payload = {"recpipe": {"epoch_seconds": ours_s, "history": ours["history"], "parameters": ours["parameters"],
                           "train_rows": train_users, "command": ours["command"]},
               "recbole": {"epoch_seconds": rb_s, **rb, "inter_rows": rows_written},
               "_comparison": {"recbole_seconds_per_epoch_over_recpipe": round(rb_s / ours_s, 2),
                               "valid_NDCG@10_at_last_epoch": {"recpipe": ours["history"][-1]["valid_NDCG@10"],
                                                                "recbole": rb["history"][-1]["valid_NDCG@10"]}},
               "_meta": {"dataset": "amazon-beauty", "ds": BEAUTY_DS, "seed": ctx.cfg.seed, "epochs": args.epochs,
                         "batch_size": batch,
                         "protocol": "leave-one-out; valid target scored by full ranking over all items",
                         "recbole": f"1.2.1, SASRec, CE loss, MAX_ITEM_LIST_LENGTH 50, train_batch_size {batch}, "
                                    "its defaults otherwise (lr 0.001, dropout 0.5)"},
               "machine": machine()}
    report(payload)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
