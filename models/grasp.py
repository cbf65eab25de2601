"""GRASP's holistic attention (Dai et al., "Enhancing Sequential Recommendation with World Knowledge from LLMs").

A swappable enhancer for ``models.sasrec.SASRec``: it rewrites the backbone's input embeddings with frozen semantic
features derived from LLM (or metadata) text, used as *input*, never as a supervision target:

* **fine-grained attention** between the user and the items of the sequence: at position t the query is the user as
  of t (the mean semantic vector of items 1..t) plus item t's vector, the keys/values are the semantic vectors of
  items 1..t (causal);
* **global attention** over the mean-pooled semantic features of the user's top-k similar users and of item t's
  top-k similar items (plus the user as of t and item t's own semantic vector);
* **sigmoid** attention weights (each weight in (0, 1) independently, so they do not sum to one and several interests
  can be active at once, unlike softmax);
* an **MLP adapter** from ``[embedding, fine, global]`` into the backbone's hidden size, added residually.

Optionally (``enrich_items``) the item table used for input and scoring gets the same semantic features through a
second adapter, which lets rarely-seen (tail) items borrow from their text. That adapter reads the item's id
embedding beside the texts by default; with ``item_adapter_ids=False`` it reads the texts only, so what it adds is a
function of the text learned on all items and a rare item's poorly trained id embedding cannot distort it.

Optionally (``text_init`` > 0) the backbone's item id embeddings start from the text's top principal components
instead of random noise (an addition to the paper, in the spirit of LLM-ESR/LLMInit: the text is still input only).
Measured effects of these options: ``tests/benchmarks/results/`` and the README.

The user's own description is used to *retrieve* similar users, not as an input by default: it is written from all
of the user's train items, so at training position t it describes items t+1.. that are the training targets; fed in,
the model learns to read the answer off it during training, which does not carry over to the held-out item
(``own_user_text=True`` restores it for comparison). The similar users retrieved by that text carry the same
information one step removed, and they are stale by one item at test time; they are left out by default
(``user_neighbours=True`` restores the paper's global attention).

The feature tables are buffers (not parameters, not saved in checkpoints): ``item_sem``/``item_nb`` (N + 1, D) and
``user_sem``/``user_nb`` (U, D), row 0 of the item tables being padding.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from models.configs import GRASPConfig
from models.sasrec import Enhancer


class SigmoidAttention(nn.Module):
    """Single-head attention whose weights are ``sigmoid(q.k / sqrt(H) + b)``, masked, never normalised."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.q, self.k, self.v = (nn.Linear(hidden, hidden) for _ in range(3))
        self.bias = nn.Parameter(torch.zeros(1))
        self.scale = 1.0 / math.sqrt(hidden)

    def forward(self, query: torch.Tensor, context: torch.Tensor,
                mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """query (..., Q, H), context (..., C, H), mask (..., Q, C) bool -> out (..., Q, H), weights (..., Q, C)."""
        scores = (self.q(query) @ self.k(context).transpose(-1, -2)) * self.scale + self.bias  # (..., Q, C)
        w = torch.sigmoid(scores)                                               # (..., Q, C), each in (0, 1)
        if mask is not None:
            w = w * mask
        return w @ self.v(context), w                                           # (..., Q, H), (..., Q, C)


class Adapter(nn.Module):
    """MLP from concatenated features into the backbone's hidden size."""

    def __init__(self, d_in: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(d_in), nn.Linear(d_in, 2 * hidden), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(2 * hidden, hidden))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., d_in) -> (..., H)
        return self.net(x)


class HolisticAttention(Enhancer):
    def __init__(self, cfg: GRASPConfig, hidden: int, dropout: float, item_sem: torch.Tensor, item_nb: torch.Tensor,
                 user_sem: torch.Tensor, user_nb: torch.Tensor) -> None:
        """``hidden``/``dropout``: the backbone's; tables (D = the text embeddings' size, e.g. 384)."""
        super().__init__()
        D = item_sem.shape[1]
        assert item_sem.shape == item_nb.shape, "item tables (N + 1, D)"
        assert user_sem.shape == user_nb.shape and user_sem.shape[1] == D, "user tables (U, D)"
        self.cfg = cfg
        for name, t in (("item_sem", item_sem), ("item_nb", item_nb), ("user_sem", user_sem), ("user_nb", user_nb)):
            self.register_buffer(name, t.float(), persistent=False)            # frozen features
        H = hidden
        self.item_proj = nn.Linear(D, H)                                        # semantic space -> hidden
        self.user_proj = nn.Linear(D, H)
        self.fine = SigmoidAttention(H)
        self.glob = SigmoidAttention(H)
        self.adapter = Adapter(3 * H, H, dropout)
        n_in = 3 if cfg.item_adapter_ids else 2
        self.item_adapter = Adapter(n_in * H, H, 0.0) if cfg.enrich_items else None  # the scoring table: no dropout
        self.drop = nn.Dropout(dropout)
        self.last_weights: dict[str, torch.Tensor] = {}

    def post_init(self, item_emb: nn.Embedding) -> None:
        """After the backbone's generic init: zero the adapters' output layers (training starts from the plain
        backbone and learns what the text adds) and, with ``text_init``, start the id embeddings from the text."""
        for a in (self.adapter, self.item_adapter):
            if a is not None:
                nn.init.zeros_(a.net[-1].weight)
                nn.init.zeros_(a.net[-1].bias)
        if self.cfg.text_init > 0:
            with torch.no_grad():
                item_emb.weight[1:] = text_pca(self.item_sem[1:], item_emb.embedding_dim, self.cfg.text_init)

    def _text(self, rows: torch.Tensor) -> torch.Tensor:
        """Looked-up text rows in the weights' dtype: the frozen tables stay fp32 when DeepSpeed's bf16/fp16 casts
        only the parameters (ZeRO-2 on GPUs)."""
        return rows.to(self.item_proj.weight.dtype)

    def enrich_items(self, emb: torch.Tensor) -> torch.Tensor:
        """(N + 1, H) id embeddings -> (N + 1, H) id embeddings + adapter([id,] own text, neighbours' text)."""
        if self.item_adapter is None:
            return emb
        sem = self.item_proj(self._text(torch.stack([self.item_sem, self.item_nb])))  # (2, N + 1, H)
        parts = [emb, sem[0], sem[1]] if self.cfg.item_adapter_ids else [sem[0], sem[1]]
        extra = self.item_adapter(torch.cat(parts, dim=-1))                     # (N + 1, H)
        return emb + extra * (torch.arange(len(emb), device=emb.device) != 0)[:, None]  # padding row stays as is

    def forward(self, x: torch.Tensor, seq: torch.Tensor, users: torch.Tensor) -> torch.Tensor:
        """x (B, T, H) input embeddings, seq (B, T) left-padded item ids, users (B,) -> (B, T, H)."""
        B, T, H = x.shape
        assert seq.shape == (B, T) and users.shape == (B,), "seq (B, T) and users (B,) must match x (B, T, H)"
        valid = seq != 0                                                        # (B, T)
        it = self.item_proj(self._text(self.item_sem[seq])) * valid[..., None]  # (B, T, H)
        it_nb = self.item_proj(self._text(self.item_nb[seq]))                   # (B, T, H)
        # the user as of position t: the mean semantic vector of items 1..t (causal), plus optionally their own text
        n = valid.cumsum(1).clamp(min=1)[..., None]                             # (B, T, 1)
        profile = it.cumsum(1) / n                                              # (B, T, H)
        if self.cfg.own_user_text:
            profile = profile + self.user_proj(self._text(self.user_sem[users]))[:, None, :]

        # fine-grained: the user at t (with item t) attends to the items 1..t of the sequence
        causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()    # (T, T)
        mask = causal[None] & valid[:, None, :] & valid[:, :, None]             # (B, T, T)
        fine, w_fine = self.fine(profile + it, it, mask)                        # (B, T, H), (B, T, T)

        # global: the item embedding at t attends to [the user at t, similar users, item t, item t's similar items]
        ctx = [profile, it, it_nb]
        if self.cfg.user_neighbours:
            us_nb = self.user_proj(self._text(self.user_nb[users]))             # (B, H)
            ctx.insert(1, us_nb[:, None, :].expand(B, T, H))
        glob, w_glob = self.glob(x.unsqueeze(2), torch.stack(ctx, dim=2))       # (B, T, 1, H), (B, T, 1, C)
        glob = glob.squeeze(2)                                                  # (B, T, H)

        self.last_weights = {"fine": w_fine.detach(), "global": w_glob.squeeze(2).detach()}
        return x + self.drop(self.adapter(torch.cat([x, fine, glob], dim=-1)))  # (B, T, H)


def text_pca(vectors: torch.Tensor, dim: int, std: float) -> torch.Tensor:
    """(R, D) text vectors -> (R, dim): their top principal components, scaled to an overall ``std``
    (zero columns beyond min(R, D) components)."""
    centred = vectors - vectors.mean(0)                                          # (R, D)
    q = min(dim, *centred.shape)
    _, _, v = torch.pca_lowrank(centred, q=q, center=False, niter=4)             # v (D, q)
    out = torch.nn.functional.pad(centred @ v, (0, dim - q))                     # (R, dim)
    return out * (std / out.std().clamp(min=1e-12))


def mean_neighbours(vectors: torch.Tensor, neighbours: torch.Tensor) -> torch.Tensor:
    """Mean-pool the vectors of each row's neighbours: vectors (R, D), neighbours (R, k) row ids (-1 = none) -> (R, D)."""
    have = (neighbours >= 0).float()                                            # (R, k)
    gathered = vectors[neighbours.clamp(min=0)] * have[..., None]               # (R, k, D)
    return gathered.sum(1) / have.sum(1, keepdim=True).clamp(min=1.0)           # (R, D)


def build(n_items: int, hidden: int, dropout: float, tables: dict[str, torch.Tensor],
          cfg: GRASPConfig) -> HolisticAttention:
    """The enhancer of a backbone with ``hidden``/``dropout`` from ``{"item_sem", "item_nb", "user_sem", "user_nb"}``
    tables (see the module docstring)."""
    assert tables["item_sem"].shape[0] == n_items + 1, "item tables need a padding row 0"
    return HolisticAttention(cfg, hidden, dropout, tables["item_sem"], tables["item_nb"], tables["user_sem"],
                             tables["user_nb"])
