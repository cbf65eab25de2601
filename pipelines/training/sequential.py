"""Sequential recommenders (SASRec, SASRec + GRASP) on the generic loop: batches of left-padded histories,
next-item loss over all items (or one sampled negative), full-ranking validation, and the modules built from the
config.

Every global batch is split across ranks (``rows[rank::world]``) and each rank divides its summed loss by the
*global* number of targets, so the averaged gradient equals the one-process gradient.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow.compute as pc
import torch

from features.embeddings import vectors_of
from jobs import warehouse
from models.grasp import build, mean_neighbours
from models.items import has_text, prepare, text_neighbours
from models.sasrec import SASRec, bce_loss, ce_loss, sampled_ce_loss
from pipelines.config import Config, SoftTargetsConfig
from pipelines.context import StageContext
from pipelines.evaluation.protocol import Csr, EvalData, metrics_from_ranks
from pipelines.training.code_key import model_files, source_hash
from pipelines.training.loop import Step, StepLoss, Task
from pipelines.training.ranking import NegativeSampler, full_ranks, sample_items, training_exclude

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

    def batches(self, batch_size: int, seed: int, by_length: bool = True) -> list[np.ndarray]:
        """Row indices of each batch: rows of similar length together (little padding), batch order shuffled; or,
        not ``by_length``, rows shuffled."""
        rng = np.random.default_rng(seed)
        order = (np.lexsort((rng.random(len(self.users)), self.n_targets)) if by_length
                 else rng.permutation(len(self.users)))
        chunks = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
        return [chunks[i] for i in rng.permutation(len(chunks))] if by_length else chunks


def epoch_batch_size(n_rows: int, batch_size: int, min_batches: int = 0, world: int = 1, floor: int = 32) -> int:
    """The batch that gives an epoch of ``n_rows`` rows at least ``min_batches`` batches: ``batch_size`` shrunk to
    ``n_rows // min_batches`` but not below ``floor`` (nor above ``batch_size``), rounded down to a multiple of the
    world size; ``min_batches`` 0 keeps ``batch_size``."""
    if not min_batches:
        return batch_size
    b = min(batch_size, max(min(floor, batch_size), n_rows // min_batches))
    return max(world, b - b % world)


# ----------------------------------------------------------------------------- scoring

@torch.no_grad()
def user_vectors(model: SASRec, hist: Csr, n_users: int, max_len: int, batch: int,
                 device: str | torch.device = "cpu") -> tuple[np.ndarray, np.ndarray]:
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


# ----------------------------------------------------------------------------- the task

class SequentialTask(Task):
    """Next-item prediction on the train part of ``data``; validation = full-ranking NDCG@10 on the valid targets."""

    def __init__(self, data: EvalData, max_len: int, batch_size: int, loss: str = "ce", eval_batch: int = 1024,
                 batching: str = "length_weighted", min_batches: int = 0, world: int = 1,
                 soft: SoftTargetsConfig | None = None, item_text: np.ndarray | None = None,
                 negatives: int = 1024) -> None:
        """``soft`` with a weight > 0: semantic soft targets (``ce_loss``) over the text neighbours of
        ``item_text`` (N + 1, D) among the trained items. ``negatives``: per batch, with ``loss="sampled"``."""
        self.data, self.max_len, self.loss_kind, self.eval_batch = data, max_len, loss, eval_batch
        self.train = TrainSet.from_history(data.train, max_len)
        if len(self.train.users) == 0:
            raise ValueError("no user has two or more train items: nothing to train a sequential model on")
        self.batch_size = epoch_batch_size(len(self.train.users), batch_size, min_batches, world)
        self.by_length = batching != "random"
        # length_weighted: every batch's summed loss is divided by the mean number of targets per batch, not its own
        # number, so a target weighs the same in a batch of short histories as in one of long ones
        n_batches = -(-len(self.train.users) // self.batch_size)
        self.per_batch = float(self.train.n_targets.sum()) / n_batches if batching == "length_weighted" else None
        self.exclude = training_exclude(data)  # cold items: no training sequence holds one, no softmax sees one
        self.soft_cfg, self.soft = (soft, soft_targets(item_text, self.exclude, soft)) if soft and soft.weight else (None, None)
        self.sampler = (NegativeSampler(np.bincount(self.train.seqs[:, 1:].ravel(), minlength=data.n_items + 1), negatives,
                                        self.exclude) if loss == "sampled" else None)

    def batches(self, seed: int) -> list[np.ndarray]:
        return self.train.batches(self.batch_size, seed, self.by_length)

    def loss(self, engine, rows: np.ndarray, step: Step) -> StepLoss:
        n_global = self.per_batch or float(self.train.n_targets[rows].sum())
        mine = rows[step.rank::step.world]
        seq = self.train.seqs[mine]
        seq = seq[:, int((seq != 0).any(0).argmax()):]                          # trim all-padding columns
        seq_t = torch.from_numpy(seq).to(step.device)
        inp, tgt = seq_t[:, :-1], seq_t[:, 1:]
        users = torch.from_numpy(self.train.users[mine]).to(step.device)
        items = engine.module.item_table()                                      # (N + 1, H)
        hidden = engine(inp, users, items)                                      # (b, T, H)
        norm = n_global / step.world
        exclude = None if self.exclude is None else self.exclude.to(step.device)
        if self.loss_kind == "ce":
            soft = None if self.soft is None else tuple(t.to(step.device) for t in self.soft)
            loss = ce_loss(hidden, tgt, items, normaliser=norm, exclude=exclude, soft=soft,
                           soft_weight=self.soft_cfg.weight_at(step.epoch) if self.soft_cfg else 0.0)
        elif self.sampler is not None:
            neg = torch.from_numpy(self.sampler.draw(step.rng)).to(step.device)
            loss = sampled_ce_loss(hidden, tgt, items, neg, self.sampler.log_q.to(step.device), normaliser=norm)
        else:
            neg = sample_items(step.rng, self.data.n_items, tuple(tgt.shape), self.exclude)
            loss = bce_loss(hidden, tgt, torch.from_numpy(neg).to(step.device), items, normaliser=norm)
        return StepLoss(loss, norm, int((tgt != 0).sum()))

    def validate(self, module: SASRec, device: torch.device) -> dict[str, float]:
        d = self.data
        uv, iv = user_vectors(module, d.train, d.n_users, self.max_len, self.eval_batch, device)
        return metrics_from_ranks(full_ranks(torch.from_numpy(uv), torch.from_numpy(iv), d.train, d.valid), (10,))


# ----------------------------------------------------------------------------- models and their inputs

def feature_tables(ctx: StageContext, source: str, n_items: int, n_users: int) -> dict[str, np.ndarray]:
    """``item_sem``/``item_nb`` (N + 1, D) and ``user_sem``/``user_nb`` (U, D): own vectors and neighbours' mean."""
    for table, stage in (("text_embeddings", "embed"), ("neighbours", "neighbours")):
        if not warehouse.partition_path(ctx.home, table, ctx.ds).exists():
            raise FileNotFoundError(f"GRASP and text-item models need the '{table}' table of ds={ctx.ds}: run the '{stage}' stage first "
                                    f"(recpipe run --ds {ctx.ds} --until neighbours)")
    emb = warehouse.read_arrow(ctx.home, "text_embeddings", ctx.ds)
    nb = warehouse.read_arrow(ctx.home, "neighbours", ctx.ds, columns=["kind", "source", "idx", "rank", "neighbour_idx"])
    out = {}
    for kind, rows in (("item", n_items + 1), ("user", n_users)):
        vec, idx, _ = vectors_of(emb, kind, source)
        if len(idx) == 0:
            raise ValueError(f"text_embeddings of ds={ctx.ds} has no {kind} vectors from source '{source}': add "
                             f"'{source}' to embed.sources and re-run embed, or set train_sequential.text_source")
        sem = np.zeros((rows, vec.shape[1]), np.float32)
        sem[idx] = vec
        part = nb.filter(pc.and_(pc.equal(nb.column("kind"), kind), pc.equal(nb.column("source"), source)))
        k = int(pc.max(part.column("rank")).as_py() or 0) + 1 if part.num_rows else 1
        table = np.full((rows, k), -1, np.int64)
        table[part.column("idx").to_numpy(), part.column("rank").to_numpy()] = part.column("neighbour_idx").to_numpy()
        pooled = mean_neighbours(torch.from_numpy(sem), torch.from_numpy(table)).numpy()
        out[f"{kind}_sem"], out[f"{kind}_nb"] = sem, pooled
    return out


def soft_targets(item_text: np.ndarray | None, exclude: torch.Tensor | None,
                 cfg: SoftTargetsConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Each item's ``cfg.k`` text neighbours and weights (``models.items.text_neighbours``) among the items with
    text outside ``exclude`` (the held-out cold items: no soft target may put mass on one)."""
    assert item_text is not None, "semantic soft targets need the item text table"
    text = torch.from_numpy(item_text)
    return text_neighbours(text, fit_rows(text, exclude), cfg.k, cfg.temperature)


def fit_rows(text: torch.Tensor, exclude: torch.Tensor | None) -> torch.Tensor:
    """(N + 1,) bool: the items a text transform may be fit on or point to: those with text, outside ``exclude``
    (the held-out cold items, whose text must shape nothing a trained model reads)."""
    rows = has_text(text)
    return rows & ~exclude.cpu() if exclude is not None else rows


def reads_text(name: str, cfg: Config) -> bool:
    """Whether ``name`` reads the item text tables: GRASP always, any model whose items are ``source`` ``text`` or
    ``pca`` or that trains on semantic soft targets."""
    t = cfg.train_sequential.for_model(name)
    return name == "grasp" or t.sasrec.items.source != "id" or t.soft_targets.weight > 0


def build_model(name: str, n_items: int, cfg: Config, tables: dict[str, np.ndarray] | None,
                exclude: torch.Tensor | None = None) -> SASRec:
    """``sasrec`` or ``grasp`` (SASRec + holistic attention over ``tables``), initialised from ``cfg.seed``; with
    ``sasrec.items.source`` ``text`` or ``pca`` its item table reads ``tables["item_sem"]``, prepared
    (``models.items.prepare``) on the items outside ``exclude`` ((N + 1,) bool, the held-out cold items)."""
    t = cfg.train_sequential.for_model(name)
    torch.manual_seed(cfg.seed)
    text = None
    if t.sasrec.items.source != "id":
        assert tables is not None, f"{name} reads the item text: it needs the feature tables"
        sem = torch.from_numpy(tables["item_sem"])
        text = prepare(t.sasrec.items, sem, fit_rows(sem, exclude), t.sasrec.hidden)
    if name == "sasrec":
        return SASRec(t.sasrec, n_items, text=text)
    assert tables is not None, "GRASP needs its feature tables"
    enhancer = build(n_items, t.sasrec.hidden, t.sasrec.dropout, {k: torch.from_numpy(v) for k, v in tables.items()},
                     t.grasp)
    return SASRec(t.sasrec, n_items, enhancer, text=text)


def code_version(name: str) -> str:
    """A hash of the model's code without comments and docstrings (``code_key``): an edit to what it computes
    trains afresh, an edit to its documentation does not."""
    return source_hash(model_files("models.grasp" if name == "grasp" else "models.sasrec")).hexdigest()[:12]
