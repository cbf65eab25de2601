"""How a SASRec backbone represents its items when they have text (``SASRecConfig.items.source``).

``pca`` (issue 39, mechanism 1): the id table, trainable and tied as SASRec's own, starts from the item text: the
text vectors' top ``hidden`` principal components (fit on the trained items), whitened and scaled so that every
dimension has the random init's std (``item_init_std``) on the trained items; an item without text keeps its random
row. A cold item gets no gradient and keeps its text's start: its day-one vector.

``text`` (mechanisms 2 and 3): an item's vector is ``W t_i + delta_i``: its frozen text vector ``t_i`` (standardised per dimension on the trained
items, ``standardise``) through a learned linear map ``W`` into the hidden size, plus a per-item delta, the
backbone's id embedding, started at zero:

* ``delta_max`` > 0 bounds the delta's norm (a rescaling in the forward pass, so the text carries what the bound
  leaves out); 0 leaves it free;
* ``id_dropout`` > 0 drops the delta of that share of the items for a training step (DropoutNet), the same table
  at input and scoring, so the text path alone must put a target where it belongs.

An item that never appears in training (a cold item: outside every training sequence and softmax) gets no gradient
on its delta, which stays 0: its vector is its text's, the model's own day-one path. The text table is a buffer,
not a parameter and not saved in checkpoints (the stage and ``pipelines.serving`` pass it, as GRASP's tables).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from models.configs import ItemsConfig


class TextItems(nn.Module):
    def __init__(self, cfg: ItemsConfig, hidden: int, text: torch.Tensor, init_std: float) -> None:
        """``text`` (N + 1, D) standardised text vectors (row 0 padding); ``init_std``: the std of each output
        dimension at the start, that of a random id embedding."""
        super().__init__()
        self.cfg, self.init_std = cfg, init_std
        self.register_buffer("text", text.float(), persistent=False)           # (N + 1, D) frozen
        self.proj = nn.Linear(text.shape[1], hidden, bias=False)

    def post_init(self, delta: nn.Embedding) -> None:
        """After the backbone's generic init: the map starts at the random init's scale, every delta at 0."""
        nn.init.normal_(self.proj.weight, std=self.init_std / self.text.shape[1] ** 0.5)
        nn.init.zeros_(delta.weight)

    def forward(self, delta: torch.Tensor) -> torch.Tensor:
        """(N + 1, H) id embeddings (the deltas) -> (N + 1, H) item vectors; the padding row stays 0."""
        if self.cfg.delta_max > 0:
            norm = delta.norm(dim=1, keepdim=True)                             # (N + 1, 1)
            delta = delta * (self.cfg.delta_max / norm.clamp(min=self.cfg.delta_max))
        if self.training and self.cfg.id_dropout > 0:
            keep = torch.rand(len(delta), 1, device=delta.device) >= self.cfg.id_dropout
            delta = delta * keep
        text = self.proj(self.text.to(self.proj.weight.dtype))                 # (N + 1, H)
        return (text + delta) * (torch.arange(len(delta), device=delta.device) != 0)[:, None]


def has_text(table: torch.Tensor) -> torch.Tensor:
    """(N + 1,) bool: the rows of an item text table that hold a vector (padding and items without text are zero
    rows). The one test of "has text" for every transform here and for the rows they are fit on."""
    return table.abs().sum(1) > 0


def text_init(emb: nn.Embedding, components: torch.Tensor, std: float) -> None:
    """Rows of ``emb`` with text start at ``std`` times their whitened components ((N + 1, H), ``components``);
    rows without text (all-zero components: padding, items with no text vector) keep their init."""
    has = has_text(components)
    with torch.no_grad():
        emb.weight[has] = (components[has] * std).to(emb.weight.dtype)


def prepare(cfg: ItemsConfig, text: torch.Tensor, rows: torch.Tensor, hidden: int) -> torch.Tensor | None:
    """The item text table the model of ``cfg.source`` reads, from raw text vectors ``text`` (N + 1, D), fit on
    ``rows`` ((N + 1,) bool: the trained items with text, so a held-out item's text shapes nothing): ``text``:
    ``standardise``d; ``pca``: ``principal_components``; ``id``: None."""
    if cfg.source == "id":
        return None
    return standardise(text, rows) if cfg.source == "text" else principal_components(text, rows, hidden)


def principal_components(text: torch.Tensor, rows: torch.Tensor, dim: int) -> torch.Tensor:
    """(N + 1, D) -> (N + 1, dim): each row's coordinates on the top ``dim`` principal components of ``rows``'
    vectors, whitened (zero mean, unit std per component over ``rows``); rows without text stay zero, components
    beyond the data's rank are zero columns."""
    fit = text[rows].double()
    mean = fit.mean(0)
    _, sing, v = torch.linalg.svd(fit - mean, full_matrices=False)                # v (min(R, D), D)
    q = min(dim, int((sing > sing[0] * 1e-6).sum()))
    scale = sing[:q] / max(len(fit) - 1, 1) ** 0.5                              # each component's std over rows
    z = ((text.double() - mean) @ v[:q].T) / scale                              # (N + 1, q)
    z = torch.nn.functional.pad(z, (0, dim - q)).float()
    return z * has_text(text)[:, None]


def text_neighbours(text: torch.Tensor, rows: torch.Tensor, k: int, temperature: float,
                    block: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """Each item's ``k`` most text-similar items among ``rows`` ((N + 1,) bool: the trained items with text; never
    itself) and their weights, a softmax of the cosine over ``temperature``: ``(ids (N + 1, k) long, -1 = none;
    weights (N + 1, k), rows summing to 1, or 0 for an item without text or neighbours)``. The semantic soft
    targets of ``ce_loss``; scored in blocks of ``block`` items, so memory is ``block x N``, not ``N x N``."""
    unit = torch.nn.functional.normalize(text.float(), dim=1)                  # (N + 1, D); no text: zero
    cand = rows.clone()
    k = min(k, max(int(cand.sum()) - 1, 0))
    ids = torch.full((len(text), max(k, 1)), -1, dtype=torch.long)
    weights = torch.zeros(len(text), max(k, 1))
    has = has_text(text)
    for lo in range(0, len(text), block) if k else ():
        cos = unit[lo:lo + block] @ unit.T                                      # (b, N + 1)
        cos[:, ~cand] = float("-inf")
        cos[torch.arange(len(cos)), torch.arange(lo, lo + len(cos))] = float("-inf")   # not itself
        top, idx = cos.topk(k, dim=1)                                          # (b, k)
        ok = has[lo:lo + block, None] & torch.isfinite(top)
        ids[lo:lo + block] = torch.where(ok, idx, -1)
        w = torch.softmax(torch.where(ok, top / temperature, float("-inf")), dim=1)
        weights[lo:lo + block] = torch.nan_to_num(w, nan=0.0) * ok
    return ids, weights


def standardise(text: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """(N + 1, D) text vectors standardised per dimension with the mean and std of ``rows`` ((N + 1,) bool: the
    items the model trains on, so a held-out item's text shapes nothing); rows without text (all zero) stay zero."""
    fit = text[rows]
    z = (text - fit.mean(0)) / fit.std(0).clamp(min=1e-6)
    return z * has_text(text)[:, None]
