"""SASRec (Kang & McAuley, 2018): causal self-attention over a user's item sequence.

nanoGPT-style: one idea per class, a dataclass config, shape comments. Items are ``1..n_items``; ``0`` is padding,
and sequences are **left-padded** (the newest item is always in the last column). The item embedding table is
shared between the input and the scoring layer: ``score(h) = h @ E.T``.

An optional ``Enhancer`` (such as ``models.grasp.HolisticAttention``) rewrites the input embeddings
``(B, T, H) -> (B, T, H)`` given the item ids and the user ids, and may enrich the item table; with
``enhancer=None`` this is plain SASRec. The config is ``models.configs.SASRecConfig``. No training code lives here:
losses are pure functions of the model's outputs.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.configs import SASRecConfig
from models.items import TextItems, text_init


class Enhancer(nn.Module):
    """What a module plugged into ``SASRec`` implements: ``forward`` rewrites the input embeddings; the two hooks
    default to doing nothing."""

    def post_init(self, item_emb: nn.Embedding) -> None:
        """Called once after the backbone's generic init (which would overwrite anything done earlier)."""

    def enrich_items(self, emb: torch.Tensor) -> torch.Tensor:
        """(N + 1, H) item id embeddings -> (N + 1, H) item table used for input and scoring."""
        return emb

    def forward(self, x: torch.Tensor, seq: torch.Tensor, users: torch.Tensor) -> torch.Tensor:
        """x (B, T, H) input embeddings, seq (B, T) item ids, users (B,) -> (B, T, H)."""
        raise NotImplementedError


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention where position t sees positions <= t that are not padding (and always itself)."""

    def __init__(self, cfg: SASRecConfig) -> None:
        super().__init__()
        assert cfg.hidden % cfg.n_heads == 0, "hidden must be divisible by n_heads"
        self.qkv = nn.Linear(cfg.hidden, 3 * cfg.hidden)
        self.proj = nn.Linear(cfg.hidden, cfg.hidden)
        self.n_heads, self.attn_dropout = cfg.n_heads, cfg.dropout
        # the original block has no dropout on the attention's output (its residual adds it as it is)
        self.resid_drop = nn.Dropout(cfg.dropout) if cfg.block == "prenorm" else nn.Identity()

    def forward(self, x: torch.Tensor, mask: torch.Tensor, kv: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, T, H) queries (and keys/values unless ``kv`` (B, T, H) is given), mask (B, 1, T, T) bool
        (True = may attend) -> (B, T, H)."""
        B, T, H = x.shape
        if kv is None:
            q, k, v = self.qkv(x).split(H, dim=2)                               # 3 x (B, T, H)
        else:
            w, b = self.qkv.weight, self.qkv.bias
            q = F.linear(x, w[:H], b[:H])                                       # (B, T, H)
            k, v = F.linear(kv, w[H:], b[H:]).split(H, dim=2)                   # 2 x (B, T, H)
        q, k, v = (z.view(B, T, self.n_heads, H // self.n_heads).transpose(1, 2) for z in (q, k, v))  # (B, nh, T, hs)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                           dropout_p=self.attn_dropout if self.training else 0.0)  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, H)                        # (B, T, H)
        return self.resid_drop(self.proj(y))


class FeedForward(nn.Module):
    """Point-wise two-layer feed-forward network: 4x wide with GELU (``prenorm``), or as wide as the input with
    ReLU and dropout after each layer (``original``)."""

    def __init__(self, cfg: SASRecConfig) -> None:
        super().__init__()
        self.original = cfg.block == "original"
        width = cfg.hidden if self.original else 4 * cfg.hidden
        self.fc = nn.Linear(cfg.hidden, width)
        self.proj = nn.Linear(width, cfg.hidden)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, H) -> (B, T, H)
        if self.original:
            return self.drop(self.proj(F.relu(self.drop(self.fc(x)))))
        return self.drop(self.proj(F.gelu(self.fc(x))))


class Block(nn.Module):
    """Pre-norm transformer block, or SASRec's original one: there only the attention's query is normalised (keys,
    values and the residual are the raw input), and the feed-forward's residual is its normalised input."""

    def __init__(self, cfg: SASRecConfig) -> None:
        super().__init__()
        self.original = cfg.block == "original"
        self.ln1, self.ln2 = nn.LayerNorm(cfg.hidden), nn.LayerNorm(cfg.hidden)
        self.attn, self.ffn = CausalSelfAttention(cfg), FeedForward(cfg)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # (B, T, H) -> (B, T, H)
        if self.original:
            x = x + self.attn(self.ln1(x), mask, kv=x)
            h = self.ln2(x)
            return h + self.ffn(h)
        x = x + self.attn(self.ln1(x), mask)
        return x + self.ffn(self.ln2(x))


def attention_mask(seq: torch.Tensor, attend_padding: bool = False) -> torch.Tensor:
    """(B, T) item ids -> (B, 1, T, T) bool: causal, padding keys hidden (visible with ``attend_padding``), the
    diagonal always visible.

    Keeping the diagonal means a padding query attends to itself only (never an all-masked row, which would give NaN).
    """
    B, T = seq.shape
    causal = torch.ones(T, T, dtype=torch.bool, device=seq.device).tril()        # (T, T)
    keys = (seq != 0)[:, None, :] | attend_padding                              # (B, 1, T)
    eye = torch.eye(T, dtype=torch.bool, device=seq.device)                     # (T, T)
    return ((causal & keys) | eye)[:, None, :, :]                               # (B, 1, T, T)


class SASRec(nn.Module):
    def __init__(self, cfg: SASRecConfig, n_items: int, enhancer: Enhancer | None = None,
                 text: torch.Tensor | None = None) -> None:
        """``n_items``: items are ``1..n_items``, 0 is padding. ``text`` (N + 1, D): the item text table of
        ``models.items.prepare`` (``cfg.items.source``): ``text``: the standardised text vectors the item vectors
        are computed from (``item_emb`` is then each item's delta; required); ``pca``: their whitened principal
        components (D = hidden), which start ``item_emb`` (optional: a model whose weights are loaded next needs
        none)."""
        super().__init__()
        self.cfg = cfg
        self.item_emb = nn.Embedding(n_items + 1, cfg.hidden, padding_idx=0)
        if (text is not None and cfg.items.source == "id") or (text is None and cfg.items.source == "text"):
            raise ValueError(f"items.source={cfg.items.source!r} needs the item text table for 'text', reads it for "
                             "'pca' and takes none for 'id'")
        assert text is None or text.shape[0] == n_items + 1, "the text table needs a row per item and padding row 0"
        self.item_text = TextItems(cfg.items, cfg.hidden, text, cfg.item_init_std) if cfg.items.source == "text" else None
        self.pos_emb = nn.Embedding(cfg.max_len, cfg.hidden)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.hidden)
        self.enhancer = enhancer
        self.apply(self._init if cfg.block == "prenorm" else self._init_xavier)
        nn.init.normal_(self.item_emb.weight, std=cfg.item_init_std)
        if cfg.items.source == "pca" and text is not None:
            text_init(self.item_emb, text, cfg.item_init_std)
        if self.item_text is not None:
            self.item_text.post_init(self.item_emb)
        if enhancer is not None:
            enhancer.post_init(self.item_emb)  # after the generic init, which would overwrite it

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)

    @staticmethod
    def _init_xavier(m: nn.Module) -> None:  # the original SASRec's (and its CE reproductions') init
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.xavier_normal_(m.weight)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def item_table(self) -> torch.Tensor:
        """(N + 1, H) item vectors used both as input and for scoring (the enhancer may enrich them)."""
        w = self.item_emb.weight
        if self.item_text is not None:
            w = self.item_text(w)
        if self.enhancer is not None:
            w = self.enhancer.enrich_items(w)
        return w

    def forward(self, seq: torch.Tensor, users: torch.Tensor | None = None,
                items: torch.Tensor | None = None) -> torch.Tensor:
        """seq (B, T) left-padded item ids, users (B,) user ids (needed by an enhancer) -> hidden (B, T, H).

        ``items``: a precomputed ``item_table()`` (so a training step computes it once for input and scoring).
        """
        B, T = seq.shape
        assert T <= self.cfg.max_len, f"sequence length {T} exceeds max_len {self.cfg.max_len}"
        assert seq.dtype == torch.long and (seq.numel() == 0 or int(seq.min()) >= 0), "seq: item ids (long), 0 = pad"
        # attended padding is part of the input: pad to max_len, so a user's output never depends on the batch's
        # longest sequence
        cut = self.cfg.max_len - T if self.cfg.attend_padding else 0
        if cut:
            seq, T = F.pad(seq, (cut, 0)), self.cfg.max_len
        table = self.item_table() if items is None else items                   # (N + 1, H)
        x = table[seq] * math.sqrt(self.cfg.hidden)                             # (B, T, H)
        if self.enhancer is not None:
            assert users is not None and users.shape == (B,), "the enhancer needs users (B,)"
            x = self.enhancer(x, seq, users)                                    # (B, T, H)
        pos = torch.arange(self.cfg.max_len - T, self.cfg.max_len, device=seq.device)  # newest item = last position
        real = (seq != 0).unsqueeze(-1)                                         # (B, T, 1)
        x = self.drop(x + self.pos_emb(pos)[None]) * real                       # (B, T, H); padding carries nothing
        mask = attention_mask(seq, self.cfg.attend_padding)
        for block in self.blocks:
            x = block(x, mask)
            if self.cfg.attend_padding:
                x = x * real  # padding stays a zero input to the next block (only its biases are attended)
        return self.ln_f(x)[:, cut:]                                            # (B, T, H)


# ----------------------------------------------------------------------------- losses (pure functions)

def never_candidates(logits: torch.Tensor, exclude: torch.Tensor | None = None) -> torch.Tensor:
    """``logits`` (M, N + 1) with the padding column and the ``exclude`` items ((N + 1,) bool) at -inf, in place:
    items a training softmax must not see at all, not even as negatives. The one rule both training softmaxes
    (``ce_loss``, ``models.llmrec.ranking_loss``) apply; ``exclude`` is how held-out (cold) items stay untrained,
    their rows getting no gradient, so no loss learns to bury them."""
    logits[:, 0] = float("-inf")                                                # padding is never a candidate
    if exclude is not None:
        logits[:, exclude] = float("-inf")
    return logits


def ce_loss(hidden: torch.Tensor, targets: torch.Tensor, items: torch.Tensor,
            normaliser: float | None = None, exclude: torch.Tensor | None = None,
            soft: tuple[torch.Tensor, torch.Tensor] | None = None, soft_weight: float = 0.0) -> torch.Tensor:
    """Cross-entropy over all items, computed only where there is a target.

    hidden (B, T, H), targets (B, T) with 0 = no target, items (N + 1, H). ``normaliser``: divide the summed loss by
    this count instead of the local number of targets (data-parallel ranks pass the global count so their gradients
    average to the one-process gradient exactly). ``exclude``: (N + 1,) bool, items outside the softmax
    (``never_candidates``); no target may be one, nor a neighbour of ``soft``.
    ``soft`` (semantic soft targets, ``models.items.text_neighbours``): each item's neighbour ids (N + 1, k) and
    weights (N + 1, k); the target of item y is then ``(1 - soft_weight)`` on y plus ``soft_weight`` times its
    neighbours' weights (y's full one-hot where it has none); at ``soft_weight`` 0 this is plain CE.
    """
    keep = targets != 0                                                         # (B, T)
    h, y = hidden[keep], targets[keep]                                          # (M, H), (M,)
    logits = never_candidates(h @ items.T, exclude)                             # (M, N + 1)
    if soft is None or soft_weight <= 0:
        loss = F.cross_entropy(logits, y, reduction="sum")
    else:
        ids, w = soft[0][y], soft[1][y]                                         # (M, k)
        logp = F.log_softmax(logits, dim=1)                                     # (M, N + 1)
        share = soft_weight * (w.sum(1) > 0)                                    # (M,) no neighbours: one-hot
        near = torch.where(w > 0, w * logp.gather(1, ids.clamp(min=0)), torch.zeros_like(w)).sum(1)
        loss = -((1 - share) * logp.gather(1, y[:, None])[:, 0] + share * near).sum()
    return loss / (normaliser if normaliser is not None else max(int(keep.sum()), 1))


def sampled_ce_loss(hidden: torch.Tensor, targets: torch.Tensor, items: torch.Tensor, negatives: torch.Tensor,
                    log_q: torch.Tensor, normaliser: float | None = None) -> torch.Tensor:
    """Sampled softmax with the logQ correction (Jean et al. 2015; Yi et al. 2019, "Sampling-bias-corrected neural
    modeling"): cross-entropy of each target against ``negatives`` (n,) item ids shared by the batch, drawn with
    replacement from a distribution q, every logit less ``log_q`` (N + 1,) = log(n q_i), so the expected gradient
    approaches full CE's; a negative equal to the row's own target (an accidental hit) is masked. Memory is
    (M, n + 1) logits instead of full CE's (M, N + 1): what lets a catalogue of 10^5-10^6 items train.

    hidden (B, T, H), targets (B, T) with 0 = no target, items (N + 1, H); ``normaliser`` as in ``ce_loss``.
    """
    keep = targets != 0                                                         # (B, T)
    h, y = hidden[keep], targets[keep]                                          # (M, H), (M,)
    pos = (h * items[y]).sum(-1) - log_q[y]                                     # (M,)
    neg = h @ items[negatives].T - log_q[negatives]                             # (M, n)
    neg = neg.masked_fill(negatives[None, :] == y[:, None], float("-inf"))
    logits = torch.cat([pos[:, None], neg], dim=1)                              # (M, 1 + n)
    loss = F.cross_entropy(logits, torch.zeros_like(y), reduction="sum")
    return loss / (normaliser if normaliser is not None else max(int(keep.sum()), 1))


def bce_loss(hidden: torch.Tensor, targets: torch.Tensor, negatives: torch.Tensor, items: torch.Tensor,
             normaliser: float | None = None) -> torch.Tensor:
    """Binary cross-entropy with one sampled negative per target (the original SASRec objective).

    hidden (B, T, H), targets and negatives (B, T) item ids (0 = no target), items (N + 1, H).
    """
    keep = targets != 0                                                         # (B, T)
    h = hidden[keep]                                                            # (M, H)
    pos = (h * items[targets[keep]]).sum(-1)                                    # (M,)
    neg = (h * items[negatives[keep]]).sum(-1)                                  # (M,)
    loss = F.softplus(-pos).sum() + F.softplus(neg).sum()
    return loss / (normaliser if normaliser is not None else max(int(keep.sum()), 1))
