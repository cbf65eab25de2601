"""WebRec's MP-Head (Zhao et al., arXiv 2511.14182, the generation stage): a message-passing attention head added
to one decoder layer of a Llama-family model, over the prompt's retrieved-document tokens.

With that layer's keys ``K_i`` and values ``V_i`` of document token ``i`` (after RoPE, all key/value heads
concatenated, size ``2 d_kv``):

* entity encoding ``e_i = W_e [K_i ; V_i]`` (``W_e`` square);
* relevance ``c_i = cos(W_r z, e_i)`` to a learnable task feature ``z``; only the ``top_k`` entities of each row
  are kept; edges ``r_ij = max(0, c_i c_j)`` among them;
* ``hops`` rounds of normalised message passing ``e_i <- sum_j r_ij / sqrt(deg_i deg_j) W_l e_j + b_l``
  (``deg_i = sum_j r_ij``); ``hops = 0`` is the LIN-head (the same head over ``W_e [K ; V]``, no passing);
* an extra attention whose queries are that layer's queries and whose keys and values are the key part and the
  value part of the entity vectors, ``softmax(Q e[:d_kv]^T / sqrt(d_head)) e[d_kv:]`` per query head (entity keys
  shared across a key/value group as the layer's own are), through the layer's own output projection (no bias),
  times a per-head gate ``g`` initialised at 0: at step 0 the model computes exactly what the base model does.

Causality: only positions after a row's last document token use the extra head (their entities all precede them),
so no position sees a token after it. Like peft's ``AdaptedAttention`` the wrapper recomputes ``Q``, ``K``, ``V``
from the layer's input rather than reaching into the attention kernel. ``doc_mask`` (B, T) is set by the caller
for one forward pass (``MPHeadAttention.documents``).
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.configs import MPHeadConfig


def message_passing(e: torch.Tensor, c: torch.Tensor, valid: torch.Tensor, layers: nn.ModuleList) -> torch.Tensor:
    """e (B, k, D) entities, c (B, k) relevances, valid (B, k) kept entities -> (B, k, D) after ``len(layers)``
    rounds of ``e_i <- sum_j r_ij / sqrt(deg_i deg_j) W e_j + b`` with ``r_ij = max(0, c_i c_j)`` on kept pairs."""
    c = c * valid
    r = torch.relu(c[:, :, None] * c[:, None, :])                              # (B, k, k)
    deg = r.sum(-1).clamp_min(1e-6)                                            # (B, k)
    norm = r / torch.sqrt(deg[:, :, None] * deg[:, None, :])
    for lin in layers:
        e = norm @ F.linear(e, lin.weight) + lin.bias                          # (B, k, D)
    return e


class MPHeadAttention(nn.Module):
    """Wraps one ``LlamaAttention``; returns its output plus the gated MP-Head output."""

    def __init__(self, base: nn.Module, cfg: MPHeadConfig, d_model: int) -> None:
        super().__init__()
        self.base, self.cfg = base, cfg
        self.head_dim = base.head_dim
        self.n_heads = base.q_proj.out_features // self.head_dim
        self.n_kv = base.k_proj.out_features // self.head_dim
        d_ent = 2 * self.n_kv * self.head_dim                                  # size of [K_i ; V_i]
        self.entity = nn.Linear(d_ent, d_ent)                                  # W_e
        self.relation = nn.Linear(d_model, d_ent)                              # W_r
        self.task = nn.Parameter(torch.randn(d_model) * 0.02)                  # z
        self.hops = nn.ModuleList(nn.Linear(d_ent, d_ent) for _ in range(cfg.hops))
        self.gate = nn.Parameter(torch.zeros(1, self.n_heads, 1, 1))           # g, per head, 0 at the start
        self.doc_mask: torch.Tensor | None = None
        self.last_selected: torch.Tensor | None = None                         # (B, k) positions kept, for tests

    @property
    def layer_idx(self) -> int:
        return self.base.layer_idx

    @contextmanager
    def documents(self, doc_mask: torch.Tensor):
        """Use ``doc_mask`` (B, T) for the forward passes inside the block."""
        self.doc_mask = doc_mask
        try:
            yield self
        finally:
            self.doc_mask = None

    def forward(self, hidden_states: torch.Tensor, position_embeddings=None, attention_mask=None,
                past_key_values=None, **kwargs):
        out, weights = self.base(hidden_states, position_embeddings, attention_mask, past_key_values, **kwargs)
        mask = self.doc_mask
        if mask is None or past_key_values is not None or not bool(mask.any()):
            return out, weights
        extra = self._extra(hidden_states, position_embeddings, mask)          # (B, T, H * hd)
        w = self.base.o_proj.weight
        return out + F.linear(extra.to(w.dtype), w), weights

    def _extra(self, h: torch.Tensor, position_embeddings, doc_mask: torch.Tensor) -> torch.Tensor:
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        B, T, _ = h.shape
        assert doc_mask.shape == (B, T), "doc_mask is (B, T)"
        hd, base = self.head_dim, self.base
        q = base.q_proj(h).view(B, T, -1, hd).transpose(1, 2)                  # (B, H, T, hd)
        k = base.k_proj(h).view(B, T, -1, hd).transpose(1, 2)                  # (B, KV, T, hd)
        v = base.v_proj(h).view(B, T, -1, hd)                                  # (B, T, KV, hd)
        cos, sin = position_embeddings
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        kv = torch.cat([k.transpose(1, 2).reshape(B, T, -1), v.reshape(B, T, -1)], -1)  # (B, T, 2 d_kv)
        e = self.entity(kv.to(self.entity.weight.dtype))                       # (B, T, 2 d_kv)
        rel = self.relation(self.task.to(self.relation.weight.dtype))           # (2 d_kv,)
        c = F.cosine_similarity(e, rel.expand_as(e), dim=-1)                   # (B, T)
        k_top = min(self.cfg.top_k, T)
        idx = c.masked_fill(~doc_mask, float("-inf")).topk(k_top, dim=1).indices  # (B, k)
        valid = torch.gather(doc_mask, 1, idx)                                 # (B, k): rows with fewer docs
        self.last_selected = torch.where(valid, idx, -1).detach()
        ent = torch.gather(e, 1, idx[..., None].expand(-1, -1, e.shape[-1]))   # (B, k, 2 d_kv)
        if self.cfg.hops:
            ent = message_passing(ent, torch.gather(c, 1, idx), valid.to(ent.dtype), self.hops)
        d_kv = ent.shape[-1] // 2
        rep = self.n_heads // self.n_kv
        ek = ent[..., :d_kv].view(B, k_top, self.n_kv, hd).transpose(1, 2).repeat_interleave(rep, 1)  # (B, H, k, hd)
        ev = ent[..., d_kv:].view(B, k_top, self.n_kv, hd).transpose(1, 2).repeat_interleave(rep, 1)
        scores = (q.to(ek.dtype) @ ek.transpose(-1, -2)) * hd ** -0.5          # (B, H, T, k)
        scores = scores.masked_fill(~valid[:, None, None, :], float("-inf"))
        pos = torch.arange(T, device=h.device)
        last_doc = torch.where(doc_mask, pos, -1).max(1).values                # (B,)
        after = (pos[None, :] > last_doc[:, None]) & (last_doc[:, None] >= 0)  # (B, T): queries that may look
        probs = torch.softmax(scores, -1).nan_to_num(0.0) * after[:, None, :, None]
        o = (probs @ ev) * self.gate.to(ev.dtype)                              # (B, H, T, hd)
        return o.transpose(1, 2).reshape(B, T, -1)                              # (B, T, H * hd)


def attach_mp_head(decoder: nn.Module, cfg: MPHeadConfig) -> MPHeadAttention:
    """Replace the self-attention of decoder layer ``cfg.layer`` (1-based) of ``decoder`` (a ``LlamaModel``) by an
    ``MPHeadAttention`` around it, in place; returns the wrapper (its new parameters are trainable)."""
    layers = decoder.layers
    if cfg.layer > len(layers):
        raise ValueError(f"mp_head.layer={cfg.layer} but the backbone keeps {len(layers)} decoder layers: lower "
                         "mp_head.layer or raise llmrec.layers")
    layer = layers[cfg.layer - 1]
    d_model = decoder.get_input_embeddings().embedding_dim
    wrapper = MPHeadAttention(layer.self_attn, cfg, d_model)
    layer.self_attn = wrapper
    return wrapper
