"""The generic training loop, driven by a DeepSpeed engine: epochs, early stopping, checkpoints, resume, progress.

A model plugs in through a ``Task`` (as in RecBole's trainer or Hugging Face's ``Trainer``): the task knows its
data and its loss, the loop knows nothing of either.

* ``Task.batches(seed)``: the global batches of one epoch, identical on every rank;
* ``Task.loss(engine, batch, step)``: this rank's share of a batch, normalised so that the ranks' gradients average
  to the one-process gradient;
* ``Task.validate(module, device)``: valid metrics on rank 0 (``NDCG@10`` decides early stopping);
* ``Task.state``/``Task.load_state``: what the best epoch keeps (the trainable parameters unless the task says
  otherwise).

Seeded: data order and dropout are re-seeded per epoch (so a resumed run repeats the uninterrupted one), each rank
gets its own sampling generator. A DeepSpeed checkpoint per epoch is what a re-run resumes from; ``best.pt`` holds
the best epoch, which the module holds at the end. Only parameters with ``requires_grad`` are optimised and
checkpointed, so a caller freezes parts of a model (a backbone, say), keeps checkpoints to the trained weights, and
trains in phases by calling ``fit`` again with another checkpoint directory.

Damaged checkpoints (cut short by a full disk or a killed copy) never fail every later run: before resuming, each
epoch checkpoint and ``best.pt`` is read back whole (every member of its zip against its CRC). A damaged one is moved
aside as ``<name>.corrupt-<time>`` with a warning naming it, and the run resumes from the newest intact epoch, or
trains from scratch when none is left (or when the best epoch's weights were in the damaged ``best.pt`` only).
``best.pt`` is always written aside and renamed into place.
"""
from __future__ import annotations

import abc
import os
import re
import resource
import shutil
import time
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np
import torch

from pipelines.config import DistributedConfig, TrainConfig
from pipelines.damage import quarantine
from pipelines.training.distributed import deepspeed_config, init_distributed, tune_allocator


class Step(NamedTuple):
    """Where a batch runs: this process's rank, the world size, the device, its sampling generator and the epoch
    (1-based; 0 outside training)."""

    rank: int
    world: int
    device: torch.device
    rng: np.random.Generator
    epoch: int = 0


class StepLoss(NamedTuple):
    """A rank's loss on its share of a batch, its weight in the epoch's mean loss, and its number of targets."""

    loss: torch.Tensor
    weight: float
    targets: int


class Task(abc.ABC):
    """What a model brings to ``fit``."""

    @abc.abstractmethod
    def batches(self, seed: int) -> Sequence[Any]:
        """The global batches of one epoch in order, the same on every rank for the same ``seed``."""

    @abc.abstractmethod
    def loss(self, engine: Any, batch: Any, step: Step) -> StepLoss:
        """Forward this rank's share of ``batch`` through ``engine``."""

    @abc.abstractmethod
    def validate(self, module: torch.nn.Module, device: torch.device) -> dict[str, float]:
        """Valid metrics (at least ``NDCG@10`` and ``HR@10``), computed on rank 0 only."""

    def state(self, module: torch.nn.Module) -> dict:
        """What ``best.pt`` keeps of the module: its trainable parameters (a frozen backbone is not copied)."""
        keep = {n for n, p in module.named_parameters() if p.requires_grad}
        return {k: v for k, v in module.state_dict().items() if k in keep}

    def load_state(self, module: torch.nn.Module, state: dict) -> None:
        unexpected = module.load_state_dict(state, strict=False).unexpected_keys
        if unexpected:
            raise ValueError(f"best.pt holds weights this model does not have: {unexpected[:5]}")


@dataclass
class FitResult:
    best_epoch: int
    best_valid_ndcg10: float
    epochs_run: int
    epoch_seconds: list[float] = field(default_factory=list)
    eval_seconds: list[float] = field(default_factory=list)
    epoch_targets: list[int] = field(default_factory=list)  # training targets (examples) seen per epoch, all ranks
    history: list[dict] = field(default_factory=list)
    resumed_from_epoch: int = 0
    world_size: int = 1
    peak_rss_mb: float = 0.0

    def summary(self) -> dict:
        es = self.epoch_seconds
        return {"best_epoch": self.best_epoch, "best_valid_NDCG@10": round(self.best_valid_ndcg10, 6),
                "epochs_run": self.epochs_run, "resumed_from_epoch": self.resumed_from_epoch,
                "world_size": self.world_size, "epoch_seconds": round(float(np.mean(es)), 3) if es else None,
                "seconds_to_best": round(float(sum(es[: self.best_epoch]) + sum(self.eval_seconds[: self.best_epoch])),
                                         2),
                "train_seconds": round(float(sum(es) + sum(self.eval_seconds)), 2),
                "examples_per_s": round(sum(self.epoch_targets) / sum(es), 1) if es and self.epoch_targets else None,
                "peak_rss_mb": round(self.peak_rss_mb, 1), "history": self.history}


def fit(module: torch.nn.Module, task: Task, train: TrainConfig, dist_cfg: DistributedConfig, seed: int,
        ckpt: Path, name: str = "model", section: str = "train_sequential",
        log: Callable[[str], None] = print) -> FitResult:
    """Train ``module`` on ``task`` with early stopping on valid NDCG@10; returns its history.

    ``ckpt``: the checkpoint directory; if it already holds a checkpoint the run resumes after that epoch.
    ``section``: the config section being trained (named in error messages).
    """
    import deepspeed

    tune_allocator()
    rank, world = init_distributed(dist_cfg.dist_backend)
    torch.manual_seed(seed)
    conf = deepspeed_config(dist_cfg.deepspeed_config, train.batch_size, world, section)
    optim = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=train.lr,
                              weight_decay=train.weight_decay)
    engine, _, _, _ = deepspeed.initialize(model=module, optimizer=optim, config=conf)
    device = engine.device if dist_cfg.device != "cpu" else torch.device("cpu")
    ckpt.mkdir(parents=True, exist_ok=True)
    plan = _recover(ckpt, name, rank, world, log)
    res, bad = _resume(engine, ckpt, plan.tag, world, name, log)
    if plan.rewrite_best and rank == 0:  # best.pt was lost, but the resumed epoch is the best one
        save_best(task.state(engine.module), ckpt / "best.pt")
    if train.validate_at_start and res.epochs_run == 0 and not res.history:
        ndcg, hr = _validate(engine, task, Step(rank, world, device, np.random.default_rng(0)), None)
        res.best_valid_ndcg10 = ndcg
        if rank == 0:
            save_best(task.state(engine.module), ckpt / "best.pt")
            log(f"  {name} before training: valid NDCG@10 {ndcg:.4f}")
        res.history.append({"epoch": 0, "loss": None, "valid_NDCG@10": round(ndcg, 6), "valid_HR@10": round(hr, 6),
                            "seconds": 0.0})
    min_epochs = min(train.min_epochs, train.epochs)

    def stopped() -> bool:
        return bad >= train.patience and res.epochs_run >= min_epochs

    if stopped():
        log(f"  {name}: already stopped early at epoch {res.epochs_run}; loading the best epoch")
    for epoch in range(res.epochs_run + 1, train.epochs + 1):
        if stopped():
            break
        epoch_seed = seed * 100_003 + epoch
        torch.manual_seed(epoch_seed + 7_919 * rank)                           # dropout repeats on resume
        step = Step(rank, world, device, np.random.default_rng(seed * 7 + epoch + 7_919 * rank), epoch)
        mean_loss = _train_epoch(engine, task, epoch_seed, step, f"{name} epoch {epoch}", res)
        ndcg, hr = _validate(engine, task, step, res)
        res.epochs_run = epoch
        improved = ndcg > res.best_valid_ndcg10
        if improved:
            res.best_valid_ndcg10, res.best_epoch, bad = ndcg, epoch, 0
            if rank == 0:
                save_best(task.state(engine.module), ckpt / "best.pt")
        else:
            bad += 1
        res.history.append({"epoch": epoch, "loss": round(mean_loss, 5), "valid_NDCG@10": round(ndcg, 6),
                            "valid_HR@10": round(hr, 6), "seconds": round(res.epoch_seconds[-1], 2)})
        if rank == 0:
            log(f"  {name} epoch {epoch}: loss {mean_loss:.4f}, valid NDCG@10 {ndcg:.4f}{' (best)' if improved else ''}, "
                f"{res.epoch_seconds[-1]:.1f} s train ({res.epoch_targets[-1] / res.epoch_seconds[-1]:.1f} examples/s) "
                f"+ {res.eval_seconds[-1]:.1f} s eval")
        res.peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        _save(engine, ckpt, epoch, res, bad, rank)
    if (ckpt / "best.pt").exists():
        task.load_state(engine.module, torch.load(ckpt / "best.pt", map_location="cpu"))
    engine.destroy()  # a ZeRO optimizer's gradient hooks would fire in a later engine over the same module
    res.peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return res


def _train_epoch(engine, task: Task, epoch_seed: int, step: Step, desc: str, res: FitResult) -> float:
    """One pass over the task's batches; appends the epoch's seconds and returns the mean loss over all ranks."""
    import torch.distributed as dist

    from pipelines.progress import progress

    engine.train()
    t0 = time.perf_counter()
    total, count = 0.0, 0
    for batch in progress(task.batches(epoch_seed), desc=desc, unit="batch", leave=False,
                          disable=step.rank != 0 or None):
        out = task.loss(engine, batch, step)
        engine.backward(out.loss)
        engine.step()
        total += out.loss.item() * out.weight
        count += out.targets
    if step.world > 1:                                                          # the epoch loss over all ranks
        tc = torch.tensor([total, float(count)], dtype=torch.float64, device=step.device)
        dist.all_reduce(tc)
        total, count = tc[0].item(), int(tc[1].item())
    res.epoch_seconds.append(time.perf_counter() - t0)
    res.epoch_targets.append(count)
    return total / max(count, 1)


def _validate(engine, task: Task, step: Step, res: FitResult | None) -> tuple[float, float]:
    """Valid (NDCG@10, HR@10): rank 0 evaluates and tells the others, so every rank stops at the same epoch.
    The seconds are recorded in ``res`` (when given)."""
    import torch.distributed as dist

    t1 = time.perf_counter()
    ndcg, hr = 0.0, 0.0
    if step.rank == 0:
        met = task.validate(engine.module, step.device)
        ndcg, hr = met["NDCG@10"], met["HR@10"]
    if step.world > 1:
        tv = torch.tensor([ndcg, hr], dtype=torch.float64, device=step.device)
        dist.broadcast(tv, 0)
        ndcg, hr = tv.tolist()
    if res is not None:
        res.eval_seconds.append(time.perf_counter() - t1)
    return ndcg, hr


def save_best(state: dict, path: Path) -> None:
    """``torch.save`` written aside, flushed to disk and renamed into place: a kill or a full disk leaves the
    earlier file whole, never a half-written one."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        torch.save(state, fh)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)


def damage(path: Path) -> str | None:
    """What is wrong with the ``torch.save`` file ``path`` (a zip: cut short, or a member failing its CRC), or None
    when it reads back whole."""
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, EOFError, ValueError, zlib.error) as exc:  # the file's form; an OSError (permission,
        return f"{type(exc).__name__}: {exc}"                             # I/O) is raised: never a reason to discard it
    return f"{bad} fails its CRC check" if bad else None


class Recovery(NamedTuple):
    """What ``fit`` resumes from after checking ``ckpt``: an epoch checkpoint's tag (None: from scratch), the
    damaged files and folders (with what is wrong) and whether ``best.pt`` is rewritten from the resumed epoch."""

    tag: str | None
    damaged: list[tuple[Path, str]]
    outcome: str
    rewrite_best: bool


def _epoch_tags(ckpt: Path) -> list[str]:
    """The epoch checkpoints to try, newest first: the one ``latest`` names and the earlier ones (a later one may
    be a save that never finished); every one when ``latest`` is unreadable; none without ``latest`` (no save
    finished)."""
    latest = ckpt / "latest"
    if not latest.exists():
        return []
    found = sorted(((int(m.group(1)), p.name) for p in ckpt.iterdir()
                    if p.is_dir() and (m := re.fullmatch(r"epoch(\d+)", p.name))), reverse=True)
    try:
        named = latest.read_text().strip()
    except (OSError, UnicodeDecodeError):
        named = ""
    newest = next((n for n, t in found if t == named), None)
    return [t for n, t in found if newest is None or n <= newest]


def _tag_damage(tag_dir: Path) -> str | None:
    files = sorted(tag_dir.glob("*.pt"))
    if not any(f.name.endswith("model_states.pt") for f in files):
        return "no model states file in it"
    return next((f"{f.name}: {why}" for f in files if (why := damage(f))), None)


def recovery_plan(ckpt: Path) -> Recovery:
    """Which epoch checkpoint of ``ckpt`` to resume from, skipping damaged ones (see the module's doc)."""
    damaged: list[tuple[Path, str]] = []
    tag = None
    for t in _epoch_tags(ckpt):
        why = _tag_damage(ckpt / t)
        if why is None:
            tag = t
            break
        damaged.append((ckpt / t, why))
    skipped = bool(damaged)  # a newer epoch checkpoint was damaged
    best = ckpt / "best.pt"
    best_why = damage(best) if best.exists() else ("missing" if tag else None)
    if best.exists() and best_why:
        damaged.append((best, best_why))
    rewrite = False
    if best_why and tag:
        done = torch.load(next((ckpt / tag).glob("*model_states.pt")), map_location="cpu", weights_only=False,
                          mmap=True)["result"]
        rewrite = done["best_epoch"] == done["epochs_run"]
        if rewrite:
            outcome = f"best.pt rewritten from {tag} (epoch {done['epochs_run']} is the best)"
        else:
            tag, outcome = None, (f"best.pt held the only copy of the best epoch ({done['best_epoch']}): training "
                                  "from scratch")
        if best_why == "missing":
            outcome = f"{best} is missing; {outcome}"
        if skipped and tag:
            outcome = f"resuming from {tag}, the newest intact epoch checkpoint; {outcome}"
    elif damaged:
        outcome = f"resuming from {tag}, the newest intact epoch checkpoint" if tag else \
            "no intact epoch checkpoint left: training from scratch"
    else:
        outcome = ""
    return Recovery(tag, damaged, outcome, rewrite)


def _recover(ckpt: Path, name: str, rank: int, world: int, log: Callable[[str], None]) -> Recovery:
    """Rank 0 checks ``ckpt`` and moves damaged files aside (naming them); every rank follows its plan."""
    import torch.distributed as dist

    plan = recovery_plan(ckpt) if rank == 0 else None
    if world > 1:
        box = [plan]
        dist.broadcast_object_list(box, src=0)
        plan = box[0]
    if rank == 0:
        for path, why in plan.damaged:
            quarantine(path, f"{name} checkpoint", why, plan.outcome, log)
        if plan.outcome and not plan.damaged:  # best.pt missing beside an epoch checkpoint
            log(f"  WARNING: {name}: {plan.outcome}")
    if world > 1:
        dist.barrier()
    return plan


def _resume(engine, ckpt: Path, tag: str | None, world: int, name: str,
            log: Callable[[str], None]) -> tuple[FitResult, int]:
    """The result so far and the epochs without improvement, from epoch checkpoint ``tag`` (None: a fresh start)."""
    if tag is None:
        return FitResult(best_epoch=0, best_valid_ndcg10=-1.0, epochs_run=0, world_size=world), 0
    _, state = engine.load_checkpoint(str(ckpt), tag=tag, load_module_strict=not _has_frozen(engine.module))
    res = FitResult(**{**state["result"], "world_size": world})
    res.resumed_from_epoch = res.epochs_run
    log(f"  {name}: resuming after epoch {res.epochs_run} from {ckpt}")
    return res, state["bad"]


def _save(engine, ckpt: Path, epoch: int, res: FitResult, bad: int, rank: int) -> None:
    """A DeepSpeed checkpoint of this epoch (all ranks write); older epochs are removed once it is complete."""
    state = {"result": {k: v for k, v in res.__dict__.items() if k not in ("resumed_from_epoch", "world_size")},
             "bad": bad}
    engine.save_checkpoint(str(ckpt), tag=f"epoch{epoch}", client_state=state,
                           exclude_frozen_parameters=_has_frozen(engine.module))
    if rank == 0:
        for old in ckpt.glob("epoch*"):
            if old.name != f"epoch{epoch}":
                shutil.rmtree(old, ignore_errors=True)


def _has_frozen(module: torch.nn.Module) -> bool:
    """Checkpoints leave frozen parameters out (they are not trained: the caller rebuilds them)."""
    return any(not p.requires_grad for p in module.parameters())
