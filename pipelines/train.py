"""The training loop for sequential recommenders, driven by a DeepSpeed engine.

* **One process on CPU** (the default): DeepSpeed with the gloo backend, set up in-process by the env-var recipe
  (``RANK=0 WORLD_SIZE=1 LOCAL_RANK=0 MASTER_ADDR MASTER_PORT`` before ``deepspeed.init_distributed``).
* **Several processes** (CPU or GPUs): run the same entry point under ``torchrun`` or the ``deepspeed`` launcher,
  which set ``RANK``/``WORLD_SIZE``; every global batch is split across ranks and each rank divides its summed loss
  by the *global* number of targets, so the averaged gradient equals the one-process gradient.
* **ZeRO / fp16 / GPU**: ``train.deepspeed_config`` names a DeepSpeed JSON (``infra/deepspeed/``); its batch keys are
  overridden from ``train.batch_size`` and the world size.

Seeded (data order and dropout are re-seeded per epoch, so a resumed run repeats the uninterrupted one), early
stopping on valid NDCG@10 (full ranking), a DeepSpeed checkpoint per epoch that a re-run resumes from, and progress
with epoch time. Models come from ``models/``; nothing here knows their internals beyond ``forward`` and
``item_table``.
"""
from __future__ import annotations

import json
import os
import resource
import shutil
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from pipelines.evaluation import Csr, EvalData


# ----------------------------------------------------------------------------- data

def left_padded(hist: Csr, users: np.ndarray, width: int) -> np.ndarray:
    """(len(users), width) int64: each user's last ``width`` items, left-padded with 0 (newest in the last column)."""
    starts, ends = hist.indptr[users], hist.indptr[users + 1]
    out = np.zeros((len(users), width), np.int64)
    for j in range(width):                                   # column j holds the item ``width - j`` from the end
        pos = ends - (width - j)
        ok = pos >= starts
        out[ok, j] = hist.indices[pos[ok]]
    return out


@dataclass
class TrainSet:
    """Training sequences: ``seqs[:, :-1]`` are inputs, ``seqs[:, 1:]`` the next-item targets (0 = none)."""

    users: np.ndarray     # (S,) user ids with at least two train items
    seqs: np.ndarray      # (S, max_len + 1) int64, left-padded
    n_targets: np.ndarray  # (S,) targets per row

    @classmethod
    def from_history(cls, hist: Csr, max_len: int) -> "TrainSet":
        lens = hist.lengths()
        users = np.flatnonzero(lens >= 2)
        seqs = left_padded(hist, users, max_len + 1)
        return cls(users, seqs, np.minimum(lens[users], max_len + 1) - 1)

    def batches(self, batch_size: int, seed: int) -> list[np.ndarray]:
        """Row indices of each batch: rows of similar length together (little padding), batch order shuffled."""
        rng = np.random.default_rng(seed)
        order = np.lexsort((rng.random(len(self.users)), self.n_targets))
        chunks = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
        return [chunks[i] for i in rng.permutation(len(chunks))]


# ----------------------------------------------------------------------------- distributed set-up

def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for MASTER_PORT)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed(backend: str = "gloo") -> tuple[int, int]:
    """Initialise torch.distributed through DeepSpeed once per process; returns (rank, world_size).

    Without a launcher this is the single-process recipe (gloo on CPU needs no MPI); under ``torchrun`` or the
    ``deepspeed`` launcher the variables they set win.
    """
    import deepspeed
    import torch.distributed as dist

    if not dist.is_initialized():
        for k, v in (("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0"), ("MASTER_ADDR", "127.0.0.1")):
            os.environ.setdefault(k, v)
        os.environ.setdefault("MASTER_PORT", str(free_port()))
        deepspeed.init_distributed(dist_backend=backend)
    return dist.get_rank(), dist.get_world_size()


def deepspeed_config(path: str, batch_size: int, world: int) -> dict:
    """The DeepSpeed config: the JSON at ``path`` (or ZeRO stage 0) with the batch keys set for this world size."""
    conf = {"zero_optimization": {"stage": 0}}
    if path:
        try:
            conf = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"train_grasp.deepspeed_config: {path} does not exist; use one of infra/deepspeed/*.json "
                                    "or leave it empty for ZeRO stage 0") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"train_grasp.deepspeed_config: {path} is not valid JSON ({e})") from None
    if batch_size % world:
        raise ValueError(f"train.batch_size={batch_size} is not divisible by the world size {world}; pick a multiple")
    conf.update({"train_batch_size": batch_size, "train_micro_batch_size_per_gpu": batch_size // world,
                 "gradient_accumulation_steps": 1})
    conf.setdefault("steps_per_print", 10 ** 9)
    conf.setdefault("wall_clock_breakdown", False)
    if int(conf.get("zero_optimization", {}).get("stage", 0)) >= 3:
        raise ValueError(f"train_grasp.deepspeed_config: {path} asks for ZeRO stage 3, which partitions the item table "
                         "the loop scores with outside the engine; use stage 0-2 (infra/deepspeed/)")
    conf.pop("optimizer", None)  # we pass a torch optimizer: a named one would JIT-compile cpu_adam
    return conf


# ----------------------------------------------------------------------------- the loop

def tune_allocator() -> bool:
    """Keep glibc from returning every large block to the OS: the (targets, N) logits are allocated and freed each
    step, and the page faults of fresh mmaps cost a third of a CPU epoch on Beauty. Linux/glibc only; a no-op elsewhere."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
        return bool(libc.mallopt(M_MMAP_THRESHOLD, 1 << 30) and libc.mallopt(M_TRIM_THRESHOLD, 1 << 30))
    except (OSError, AttributeError):
        return False


@torch.no_grad()
def full_ranks(users: torch.Tensor, items: torch.Tensor, hist: Csr, targets: np.ndarray, batch: int = 4096) -> np.ndarray:
    """0-based full-ranking rank of each user's target, the protocol of ``pipelines.evaluation`` in torch (threaded).

    users (U, H), items (N + 1, H); only users with a target (``targets > 0``) are ranked. History and padding are not
    candidates, the target always is, ties count against the target.
    """
    who = np.flatnonzero(targets > 0)
    out = np.empty(len(who), np.int64)
    for lo in range(0, len(who), batch):
        b = who[lo:lo + batch]
        s = users[torch.from_numpy(b)] @ items.T                                 # (B, N + 1)
        tgt = torch.from_numpy(targets[b].astype(np.int64))
        rows = torch.arange(len(b))
        ts = s[rows, tgt].clone()                                               # (B,)
        r, it = hist.rows(b)
        s[torch.from_numpy(r), torch.from_numpy(it.astype(np.int64))] = float("-inf")
        s[:, 0] = float("-inf")
        s[rows, tgt] = ts
        out[lo:lo + len(b)] = ((s >= ts[:, None]).sum(1) - 1).numpy()
    return out

@dataclass
class LoopConfig:
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.0
    epochs: int = 200
    patience: int = 5
    loss: str = "ce"                 # ce | bce
    seed: int = 42
    deepspeed_config: str = ""
    dist_backend: str = "gloo"
    device: str = "cpu"
    eval_batch: int = 1024


@dataclass
class FitResult:
    best_epoch: int
    best_valid_ndcg10: float
    epochs_run: int
    epoch_seconds: list[float] = field(default_factory=list)
    eval_seconds: list[float] = field(default_factory=list)
    history: list[dict] = field(default_factory=list)
    resumed_from_epoch: int = 0
    world_size: int = 1
    peak_rss_mb: float = 0.0

    def summary(self) -> dict:
        es = self.epoch_seconds
        return {"best_epoch": self.best_epoch, "best_valid_NDCG@10": round(self.best_valid_ndcg10, 6),
                "epochs_run": self.epochs_run, "resumed_from_epoch": self.resumed_from_epoch,
                "world_size": self.world_size, "epoch_seconds": round(float(np.mean(es)), 3) if es else None,
                "seconds_to_best": round(float(sum(es[: self.best_epoch]) + sum(self.eval_seconds[: self.best_epoch])), 2),
                "train_seconds": round(float(sum(es) + sum(self.eval_seconds)), 2),
                "peak_rss_mb": round(self.peak_rss_mb, 1), "history": self.history}


@torch.no_grad()
def user_vectors(model: torch.nn.Module, hist: Csr, n_users: int, max_len: int, batch: int,
                 device: str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """(U, H) representation of every user after their history, and the (N + 1, H) item table used for scoring."""
    was = model.training
    model.eval()
    items = model.item_table()
    out = []
    for lo in range(0, n_users, batch):
        users = np.arange(lo, min(lo + batch, n_users))
        seq = left_padded(hist, users, max_len)
        seq = seq[:, max(0, int((seq != 0).any(0).argmax())):]                # drop all-padding columns
        if seq.shape[1] == 0:
            seq = np.zeros((len(users), 1), np.int64)
        s, u = torch.from_numpy(seq).to(device), torch.from_numpy(users).to(device)
        out.append(model(s, u, items)[:, -1, :].float().cpu().numpy())         # (b, H)
    model.train(was)
    return np.concatenate(out), items.float().cpu().numpy()


def _load_resume(engine, ckpt: Path) -> dict | None:
    if not (ckpt / "latest").exists():
        return None
    _, client = engine.load_checkpoint(str(ckpt))
    return client


def fit(model: torch.nn.Module, data: EvalData, cfg: LoopConfig, max_len: int, ckpt: Path, name: str = "model",
        log: Callable[[str], None] = print) -> FitResult:
    """Train ``model`` on the train part of ``data`` with early stopping on valid NDCG@10; returns its history.

    ``ckpt``: the checkpoint directory. A DeepSpeed checkpoint of the latest epoch (every rank writes its part) and
    ``best.pt`` (rank 0) live there; if it already holds a checkpoint the run resumes after that epoch.
    At the end the model holds the best epoch's weights.
    """
    import deepspeed
    from tqdm.auto import tqdm

    from models.sasrec import bce_loss, ce_loss
    from pipelines.evaluation import metrics_from_ranks

    import torch.distributed as dist

    tune_allocator()
    rank, world = init_distributed(cfg.dist_backend)
    torch.manual_seed(cfg.seed)
    train = TrainSet.from_history(data.train, max_len)
    if len(train.users) == 0:
        raise ValueError("no user has two or more train items: nothing to train a sequential model on")
    conf = deepspeed_config(cfg.deepspeed_config, cfg.batch_size, world)
    optim = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optim, config=conf)
    device = engine.device if cfg.device != "cpu" else torch.device("cpu")
    ckpt.mkdir(parents=True, exist_ok=True)
    res = FitResult(best_epoch=0, best_valid_ndcg10=-1.0, epochs_run=0, world_size=world)
    bad = 0
    state = _load_resume(engine, ckpt)
    if state is not None:
        res = FitResult(**{**state["result"], "world_size": world})
        res.resumed_from_epoch = res.epochs_run
        bad = state["bad"]
        log(f"  {name}: resuming after epoch {res.epochs_run} from {ckpt}")
    if bad >= cfg.patience:
        log(f"  {name}: already stopped early at epoch {res.epochs_run}; loading the best epoch")
    for epoch in range(res.epochs_run + 1, cfg.epochs + 1):
        if bad >= cfg.patience:
            break
        torch.manual_seed(cfg.seed * 100_003 + epoch + 7_919 * rank)            # dropout repeats on resume
        engine.train()
        t0 = time.perf_counter()
        total, count = 0.0, 0
        batches = train.batches(cfg.batch_size, cfg.seed * 100_003 + epoch)
        neg_rng = np.random.default_rng(cfg.seed * 7 + epoch + 7_919 * rank)
        for rows in tqdm(batches, desc=f"{name} epoch {epoch}", unit="batch", leave=False,
                         disable=rank != 0 or None):
            n_global = float(train.n_targets[rows].sum())
            mine = rows[rank::world]
            seq = train.seqs[mine]
            seq = seq[:, int((seq != 0).any(0).argmax()):]                      # trim all-padding columns
            seq_t = torch.from_numpy(seq).to(device)
            inp, tgt = seq_t[:, :-1], seq_t[:, 1:]
            users = torch.from_numpy(train.users[mine]).to(device)
            items = engine.module.item_table()                                  # (N + 1, H)
            hidden = engine(inp, users, items)                                  # (b, T, H)
            if cfg.loss == "ce":
                loss = ce_loss(hidden, tgt, items, normaliser=n_global / world)
            else:
                neg = torch.from_numpy(neg_rng.integers(1, data.n_items + 1, size=tuple(tgt.shape))).to(device)
                loss = bce_loss(hidden, tgt, neg, items, normaliser=n_global / world)
            engine.backward(loss)
            engine.step()
            total += loss.item() * (n_global / world)
            count += int((tgt != 0).sum())
        if world > 1:                                                           # the epoch loss over all ranks
            tc = torch.tensor([total, float(count)], dtype=torch.float64, device=device)
            dist.all_reduce(tc)
            total, count = tc[0].item(), int(tc[1].item())
        res.epoch_seconds.append(time.perf_counter() - t0)

        t1 = time.perf_counter()
        ndcg, hr = 0.0, 0.0
        if rank == 0:                     # rank 0 evaluates and tells the others, so every rank stops at the same epoch
            uv, iv = user_vectors(engine.module, data.train, data.n_users, max_len, cfg.eval_batch, device)
            met = metrics_from_ranks(full_ranks(torch.from_numpy(uv), torch.from_numpy(iv), data.train, data.valid),
                                     (10,))
            ndcg, hr = met["NDCG@10"], met["HR@10"]
        if world > 1:
            tv = torch.tensor([ndcg, hr], dtype=torch.float64, device=device)
            dist.broadcast(tv, 0)
            ndcg, hr = tv.tolist()
        res.eval_seconds.append(time.perf_counter() - t1)
        res.epochs_run = epoch
        improved = ndcg > res.best_valid_ndcg10
        if improved:
            res.best_valid_ndcg10, res.best_epoch, bad = ndcg, epoch, 0
            if rank == 0:
                tmp = ckpt / "best.pt.tmp"
                torch.save(engine.module.state_dict(), tmp)
                tmp.replace(ckpt / "best.pt")
        else:
            bad += 1
        res.history.append({"epoch": epoch, "loss": round(total / max(count, 1), 5),
                            "valid_NDCG@10": round(ndcg, 6), "valid_HR@10": round(hr, 6),
                            "seconds": round(res.epoch_seconds[-1], 2)})
        if rank == 0:
            log(f"  {name} epoch {epoch}: loss {total / max(count, 1):.4f}, valid NDCG@10 {ndcg:.4f}"
                f"{' (best)' if improved else ''}, {res.epoch_seconds[-1]:.1f} s train + {res.eval_seconds[-1]:.1f} s eval")
        res.peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        _save(engine, ckpt, epoch, res, bad, rank)
    if (ckpt / "best.pt").exists():
        engine.module.load_state_dict(torch.load(ckpt / "best.pt", map_location="cpu"))
    res.peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return res


def _save(engine, ckpt: Path, epoch: int, res: FitResult, bad: int, rank: int) -> None:
    """A DeepSpeed checkpoint of this epoch (all ranks write); older epochs are removed once it is complete."""
    state = {"result": {k: v for k, v in res.__dict__.items() if k not in ("resumed_from_epoch", "world_size")},
             "bad": bad}
    engine.save_checkpoint(str(ckpt), tag=f"epoch{epoch}", client_state=state)
    if rank == 0:
        for old in ckpt.glob("epoch*"):
            if old.name != f"epoch{epoch}":
                shutil.rmtree(old, ignore_errors=True)
