"""How a SASRec backbone represents its items when they have text (``SASRecConfig.items.source = "text"``).

An item's vector is ``W t_i + delta_i``: its frozen text vector ``t_i`` (standardised per dimension on the trained
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


def standardise(text: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """(N + 1, D) text vectors standardised per dimension with the mean and std of ``rows`` ((N + 1,) bool: the
    items the model trains on, so a held-out item's text shapes nothing); rows without text (all zero) stay zero."""
    fit = text[rows]
    z = (text - fit.mean(0)) / fit.std(0).clamp(min=1e-6)
    return z * (text.abs().sum(1, keepdim=True) > 0)
