"""Training (pipelines/training): the LLM recommender on the generic loop.

Prompts with soft-token placeholders, the leak-free user fold-in, the examples, the Task, scoring for evaluation and
the backbone.

* **Prompt** (versioned ``PROMPT_VERSION``): ``A shopper [U] will next buy what suits these purchases, oldest first:
  [I] title; [I] title; ...; [I] title``. ``[U]``/``[I]`` are placeholder positions (any token id; ``kinds`` marks
  them) that the model overwrites with the projected WALS factors of the user and of the last ``max_history`` items
  before the target. The prompt ends with the newest item, so the last position, whose hidden state the head reads,
  is that item in the context of the ones before it (a fixed closing phrase there would be the same for every
  user, and a few layers of a frozen model carry little back to it). Titles are tokenised once per item. Rows are
  left-padded so the last position is the prompt's last token. With ``retrieval`` the prompt leads with the user's
  retrieved documents, ``Related: doc | doc | ...: `` (``docs`` documents of at most ``doc_tokens`` tokens, each
  document token marked ``DOC``), so every history position, and the last, comes after them.
* **User token without the target**: the user factor of an example is the WALS fold-in of the items *before* its
  target, the closed-form least-squares solve with the item factors fixed (what ``implicit``'s
  ``recalculate_user`` computes), batched: ``(Y'Y + reg I + alpha sum_j y_j y_j') x = sum_j (1 + alpha c_j) y_j``.
  A user row learned from all train items would encode the very targets of training.
* **Item factors that never saw a target**: the recommender's own WALS fit leaves out the last
  ``examples_per_user`` train items of each training user, which are exactly its training targets
  (``held_out_factors``). Factors fit on
  every train item would have seen each training target's interaction: their score for it is optimistic in
  training and not at valid or test time, and the model learns to trust what does not carry over.
* **Examples**: those held-out next-item targets of the train part; valid: the train part predicts the valid item;
  test: train + valid predict the test item (the evaluation protocol's histories).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from features.text import SHOP, Domain
from models.configs import LLMRecConfig
from models.llmrec import DOC, ITEM, TEXT, USER, LLMRec, info_nce, ranking_loss
from models.sasrec import never_candidates
from pipelines.backends.wals import fit_implicit
from pipelines.evaluation.protocol import Csr, EvalData, metrics_from_ranks
from pipelines.training.code_key import MODELS_DIR, model_files, source_hash
from pipelines.training.loop import Step, StepLoss, Task
from pipelines.training.ranking import full_ranks, sample_items, training_exclude

PROMPT_VERSION = "llmrec-v3"


# ----------------------------------------------------------------------------- prompts

class Prompts:
    """Token ids of the prompt's fixed pieces and of every item's title, built once; ``build`` assembles batches."""

    def __init__(self, tokenizer, titles: list[str], cfg: LLMRecConfig, domain: Domain = SHOP) -> None:
        """``titles[item_idx]`` (``titles[0]`` is padding); the prompt's words from ``domain`` (the config's)."""
        def enc(text: str) -> list[int]:
            return tokenizer(text, add_special_tokens=False)["input_ids"]

        self.cfg = cfg
        self.pad = next(t for t in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0) if t is not None)
        who, lead = f"A {domain.user}", f" will next {domain.choose} what suits these {domain.history}, oldest first:"
        self.head = enc(who) if cfg.soft_tokens else enc(who + lead)
        self.after_user = enc(lead)
        self.sep = enc(";")
        clean = [" " + " ".join((t or "").split()) for t in titles]
        ids = tokenizer(clean, add_special_tokens=False)["input_ids"] if cfg.titles else [[] for _ in clean]
        self.titles = [x[: cfg.title_tokens] for x in ids]
        self.tokenizer = tokenizer
        self.doc_lead, self.doc_sep, self.doc_end = enc("Related:"), enc(" |"), enc(".\n")

    def doc_block(self, texts: list[str]) -> tuple[list[int], list[int]]:
        """Token ids and kinds of the documents block over ``texts`` (best first, at most ``docs``); empty when
        there are none."""
        texts = [" " + " ".join(t.split()) for t in texts[: self.cfg.docs] if t and t.strip()]
        if not texts:
            return [], []
        ids, kinds = list(self.doc_lead), [TEXT] * len(self.doc_lead)
        for j, doc in enumerate(self.tokenizer(texts, add_special_tokens=False)["input_ids"]):
            if j:
                ids += self.doc_sep
                kinds += [TEXT] * len(self.doc_sep)
            doc = doc[: self.cfg.doc_tokens]
            ids += doc
            kinds += [DOC] * len(doc)
        return ids + self.doc_end, kinds + [TEXT] * len(self.doc_end)

    def row(self, items: np.ndarray, docs: tuple[list[int], list[int]] | None = None) -> tuple[list[int], list[int]]:
        """Token ids and kinds of one prompt over ``items`` (oldest first, at most ``max_history``), after the
        documents block ``docs`` (``doc_block``'s output) if any."""
        ids, kinds = (list(docs[0]), list(docs[1])) if docs else ([], [])
        ids += self.head
        kinds += [TEXT] * len(self.head)
        if self.cfg.soft_tokens:
            ids += [self.pad] + self.after_user
            kinds += [USER] + [TEXT] * len(self.after_user)
        for j, it in enumerate(items):
            if j:
                ids += self.sep
                kinds += [TEXT] * len(self.sep)
            if self.cfg.soft_tokens:
                ids.append(self.pad)
                kinds.append(ITEM)
            title = self.titles[int(it)]
            ids += title
            kinds += [TEXT] * len(title)
        return ids, kinds

    def build(self, prefixes: list[np.ndarray], docs: list | None = None) -> dict[str, np.ndarray]:
        """Left-padded ``input_ids``, ``attention_mask``, ``kinds`` (B, T) and ``hist`` (B, K): the items whose soft
        tokens fill the ITEM positions, in reading order (0 = none). ``docs``: a documents block per row (or
        None)."""
        k = self.cfg.max_history
        shown = [p[-k:] for p in prefixes]
        docs = docs if docs is not None else [None] * len(shown)
        rows = [self.row(items, d) for items, d in zip(shown, docs, strict=True)]
        t = max(len(r[0]) for r in rows)
        ids = np.full((len(rows), t), self.pad, np.int64)
        kinds = np.zeros((len(rows), t), np.int8)
        mask = np.zeros((len(rows), t), np.int64)
        hist = np.zeros((len(rows), k), np.int64)
        for b, ((r_ids, r_kinds), items) in enumerate(zip(rows, shown, strict=True)):
            ids[b, t - len(r_ids):], kinds[b, t - len(r_ids):], mask[b, t - len(r_ids):] = r_ids, r_kinds, 1
            if len(items):
                hist[b, k - len(items):] = items
        return {"input_ids": ids, "attention_mask": mask, "kinds": kinds, "hist": hist}


# ----------------------------------------------------------------------------- the user token

class FoldIn:
    """Batched WALS fold-in of a user from the items of a history, the item factors fixed."""

    def __init__(self, item_factors: np.ndarray, regularization: float, alpha: float) -> None:
        """``item_factors`` (N + 1, F), row 0 zero; ``regularization``/``alpha`` as the WALS fit used them."""
        self.y = torch.from_numpy(np.asarray(item_factors, np.float64))
        self.yty = self.y.T @ self.y + regularization * torch.eye(self.y.shape[1], dtype=torch.float64)
        self.alpha = alpha

    def __call__(self, prefixes: list[np.ndarray]) -> np.ndarray:
        """(B, F) float32: one solve per history (an empty history gives the zero vector)."""
        n = len(prefixes)
        width = max([len(p) for p in prefixes] + [1])
        items = np.zeros((n, width), np.int64)
        for b, p in enumerate(prefixes):
            items[b, : len(p)] = p
        rows = np.repeat(np.arange(n), width)
        first = np.zeros(n * width, bool)                                      # first occurrence of each (row, item)
        _, idx = np.unique(rows * len(self.y) + items.ravel(), return_index=True)
        first[idx] = True
        y = self.y[torch.from_numpy(items)]                                    # (B, L, F); padding rows are zero
        a = self.yty + self.alpha * torch.einsum("blf,blg->bfg", y, y)          # (B, F, F)
        once = torch.from_numpy(first.reshape(n, width)).to(y.dtype)[..., None]
        b = (self.alpha * y + once * y).sum(1)                                  # (B, F): sum_j (1 + alpha c_j) y_j
        return torch.linalg.solve(a, b[..., None])[..., 0].float().numpy()


def held_out_factors(hist: Csr, n_items: int, users: np.ndarray, holdout: int, wals) -> np.ndarray:
    """(N + 1, F) item factors of a WALS fit (``wals``: the run's ``WalsConfig``, implicit engine) on the train
    items of every user, except the last ``holdout`` of each of ``users`` (the training users)."""
    lens = hist.lengths()
    keep = lens.copy()
    keep[users] = np.maximum(lens[users] - holdout, 0)
    rows = np.repeat(np.arange(len(lens)), keep)
    cols = np.concatenate([hist.indices[s:s + k] for s, k in zip(hist.indptr[:-1], keep, strict=True)] + [[]])
    m = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols.astype(np.int64))), shape=(len(lens), n_items + 1))
    m.sum_duplicates()
    _, items, _ = fit_implicit(m, wals)
    items = np.asarray(items, np.float32)
    items[0] = 0.0
    return items


# ----------------------------------------------------------------------------- examples

@dataclass
class Examples:
    users: np.ndarray                 # (E,) user of each example
    prefixes: list[np.ndarray]        # items before the target, oldest first
    targets: np.ndarray               # (E,) the item to predict
    docs: list | None = None          # per example, its documents block (``Prompts.doc_block``), or None

    def __len__(self) -> int:
        return len(self.targets)

    def with_docs(self, prompts: "Prompts", texts: dict[int, list[str]]) -> "Examples":
        """The same examples with each user's documents (``texts[user]``, best first; users absent: none)."""
        blocks = {u: prompts.doc_block(t) for u, t in texts.items()}
        self.docs = [blocks.get(int(u)) for u in self.users]
        return self


def train_examples(hist: Csr, users: np.ndarray, per_user: int) -> Examples:
    """The last ``per_user`` (0 = all) next-item targets of each user's sequence in ``hist`` (position >= 1)."""
    out_u, out_p, out_t = [], [], []
    for u in users:
        seq = hist.indices[hist.indptr[u]:hist.indptr[u + 1]]
        first = 1 if not per_user else max(1, len(seq) - per_user)
        for t in range(first, len(seq)):
            out_u.append(u)
            out_p.append(seq[:t])
            out_t.append(seq[t])
    return Examples(np.asarray(out_u, np.int64), out_p, np.asarray(out_t, np.int64))


def phase_examples(data: EvalData, users: np.ndarray, phase: str) -> Examples:
    """One example per user with a target in ``phase``: the phase's history predicts its target."""
    hist, targets = data.history(phase), data.targets(phase)
    users = users[targets[users] > 0]
    return Examples(users, [hist.indices[hist.indptr[u]:hist.indptr[u + 1]] for u in users],
                    targets[users].astype(np.int64))


def seeded_users(candidates: np.ndarray, n: int, seed: int) -> np.ndarray:
    """All ``candidates`` (n = 0) or a seeded sample of ``n`` of them, sorted."""
    if not n or n >= len(candidates):
        return np.sort(candidates)
    return np.sort(np.random.default_rng(seed).choice(candidates, n, replace=False))


def llmrec_users(data: EvalData, c: LLMRecConfig, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The recommender's training users (two train items or more; ``c.train_users`` of them, seeded, 0 = all) and
    its validation users (a valid target; ``c.valid_users``, seeded with ``seed + 1``): the one draw that
    ``train_llmrec`` trains and stops on and ``web_queries`` fetches documents for."""
    return (seeded_users(np.flatnonzero(data.train.lengths() >= 2), c.train_users, seed),
            seeded_users(np.flatnonzero(data.valid > 0), c.valid_users, seed + 1))


# ----------------------------------------------------------------------------- the task

class LLMRecTask(Task):
    def __init__(self, prompts: Prompts, foldin: FoldIn, train: Examples, valid: Examples, data: EvalData,
                 batch_size: int, loss: str = "ce", negatives: int = 1000, align_weight: float = 0.0,
                 align_temperature: float = 0.1, eval_batch: int = 64) -> None:
        if len(train) == 0:
            raise ValueError("no training example: every selected user has fewer than two train items")
        self.prompts, self.foldin, self.train, self.valid, self.data = prompts, foldin, train, valid, data
        self.batch_size, self.loss_kind, self.negatives = batch_size, loss, negatives
        self.align_weight, self.align_temperature, self.eval_batch = align_weight, align_temperature, eval_batch
        self.exclude = training_exclude(data)  # cold items: in no example (train part only), in no softmax

    def inputs(self, ex: Examples, idx: np.ndarray, device) -> dict[str, torch.Tensor]:
        prefixes = [ex.prefixes[i] for i in idx]
        docs = [ex.docs[i] for i in idx] if ex.docs is not None else None
        batch = {k: torch.from_numpy(v).to(device) for k, v in self.prompts.build(prefixes, docs).items()}
        if self.prompts.cfg.soft_tokens:
            batch["user_factor"] = torch.from_numpy(self.foldin(prefixes)).to(device)
        else:
            batch.pop("hist")
        return batch

    def batches(self, seed: int) -> list[np.ndarray]:
        """Shuffled batches; when only some examples have documents, those with and those without are batched
        apart (then the batches shuffled), so a short prompt is never left-padded to a documents block."""
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(self.train))
        docs = self.train.docs
        if docs is None:
            return [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        has = np.asarray([bool(docs[i]) for i in order], bool)
        groups = [order[has], order[~has]]
        out = [g[i:i + self.batch_size] for g in groups for i in range(0, len(g), self.batch_size)]
        return [out[i] for i in rng.permutation(len(out))]

    def loss(self, engine, rows: np.ndarray, step: Step) -> StepLoss:
        mine = rows[step.rank::step.world]
        norm = len(rows) / step.world                                           # ranks average to the global mean
        # scores and losses in fp32 also when the model runs in bf16 (DeepSpeed's bf16: logits over every item
        # need more than bf16's 8 bits of mantissa)
        q = engine(**self.inputs(self.train, mine, step.device)).float()        # (b, d)
        module = engine.module
        items = module.item_table().float()                                     # (N + 1, d)
        targets = torch.from_numpy(self.train.targets[mine]).to(step.device)
        negs = None
        if self.loss_kind == "sampled":
            negs = sample_items(step.rng, items.shape[0] - 1, (len(mine), self.negatives), self.exclude)
            negs = torch.from_numpy(negs).to(step.device)
        loss = ranking_loss(q, items, targets, norm, negs,
                            None if self.exclude is None else self.exclude.to(step.device))
        # always computed (a zero weight gives zero gradients, not missing ones: every rank reduces the same tensors)
        keys = module.head.align_proj(module.item_text[targets].to(module.head.align_proj.weight.dtype)).float()
        loss = loss + self.align_weight * info_nce(q, keys, self.align_temperature, norm)
        return StepLoss(loss, norm, len(mine))

    @torch.no_grad()
    def queries(self, module: LLMRec, ex: Examples, device) -> np.ndarray:
        """(E, d) query vectors of ``ex`` (eval mode, batches of ``eval_batch``)."""
        was = module.training
        module.eval()
        # rows with documents first: batches of similar prompt lengths (little left padding), order restored below
        order = (np.argsort([0 if d else 1 for d in ex.docs], kind="stable") if ex.docs is not None
                 else np.arange(len(ex)))
        out = [module(**self.inputs(ex, order[lo:lo + self.eval_batch], device)).float().cpu()
               for lo in range(0, len(ex), self.eval_batch)]
        module.train(was)
        if not out:
            return np.zeros((0, module.cfg.head_dim), np.float32)
        q = torch.cat(out).numpy()
        back = np.empty_like(q)
        back[order] = q
        return back

    def validate(self, module: LLMRec, device) -> dict[str, float]:
        q = self.queries(module, self.valid, device)
        users = np.zeros((self.data.n_users, q.shape[1]), np.float32)
        targets = np.zeros(self.data.n_users, np.int32)
        users[self.valid.users], targets[self.valid.users] = q, self.valid.targets
        with torch.no_grad():
            items = module.item_table().float().cpu()
        return metrics_from_ranks(full_ranks(torch.from_numpy(users), items, self.data.train, targets), (10,))


@torch.no_grad()
def calibrate_scale(module: LLMRec, task: LLMRecTask, n: int = 2000) -> float:
    """Set the head's scale ``s`` to the one that minimises the cross-entropy of the first ``n`` training examples
    at the start, and return it. With ``user_skip`` the untrained model's scores are the WALS scores ``u . f_i``,
    whose scale was never fitted for a softmax: too flat a start costs epochs, too sharp a start explodes."""
    ex = task.train
    idx = np.arange(min(n, len(ex)))
    u = torch.from_numpy(task.foldin([ex.prefixes[i] for i in idx]))
    module.head.log_scale.zero_()
    logits = module.head.query(torch.zeros(len(idx), module.head.query_proj.in_features), u) @ module.item_table().T
    logits = never_candidates(logits, task.exclude)                             # the softmax of training
    targets = torch.from_numpy(ex.targets[idx])
    grid = np.logspace(-1, 3, 41)
    losses = [torch.nn.functional.cross_entropy(logits * s, targets).item() for s in grid]
    best = float(grid[int(np.argmin(losses))])
    module.head.log_scale.fill_(float(np.log(best)))
    return best


def code_version(models_dir: Path = MODELS_DIR) -> str:
    """The recommender's code and prompt version: its training task (this file) and every ``models`` module the
    model runs (``models.llmrec`` and what it imports: the MP-Head, SASRec's candidate rule, the configs), without
    comments and docstrings (``code_key``): a change to what they compute retrains it, a documentation edit does
    not."""
    h = hashlib.sha256(PROMPT_VERSION.encode())
    return source_hash([Path(__file__), *model_files("models.llmrec", models_dir)], h).hexdigest()[:12]


# ----------------------------------------------------------------------------- whose documents

def retrieval_histories(data: EvalData, cfg, eval_users: np.ndarray) -> dict[str, tuple[np.ndarray, list[np.ndarray]]]:
    """For each phase, the users the recommender needs documents for and the history each query may read
    (never the target): ``train``: the training users, their train items before the last ``examples_per_user``
    (every training target comes after them); ``valid``: the validation (early-stopping) users, their train items;
    ``test``: the scored users (``eval_users``), train + valid items. ``cfg``: the run's ``Config``; with
    ``web.users`` > 0 each phase keeps a seeded sample of that many. (The evaluate stage's valid column of a
    retrieval model therefore reads documents for the validation users only.)"""
    c, seed = cfg.llmrec, cfg.seed
    train_users, valid_users = llmrec_users(data, c, seed)
    out = {}
    for phase, users in (("train", train_users), ("valid", valid_users), ("test", eval_users)):
        hist = data.train if phase != "test" else data.history("test")
        prefixes = [hist.indices[hist.indptr[u]:hist.indptr[u + 1]] for u in users]
        if phase == "train":
            prefixes = [p[:-c.examples_per_user] for p in prefixes]
        keep = np.asarray([len(p) > 0 for p in prefixes], bool)
        users, prefixes = users[keep], [p for p, k in zip(prefixes, keep, strict=True) if k]
        if cfg.web.users and cfg.web.users < len(users):
            pick = np.sort(np.random.default_rng(seed + 3).choice(len(users), cfg.web.users, replace=False))
            users, prefixes = users[pick], [prefixes[i] for i in pick]
        out[phase] = (users, prefixes)
    return out
