"""Model (models layer): the LLM recommender module.

The LLM recommender: collaborative (WALS) factors as soft tokens in a Llama-family decoder, and an item head that
ranks every item (Hossain et al., "Do LLMs Benefit from User and Item Embeddings in Recommendation Tasks?", with an
E4SRec-style full-ranking head instead of generating item ids as text).

* Two separate 2-layer MLP **projectors** map a user's and each history item's WALS factor into the backbone's
  input-embedding space. The prompt holds the user as one soft token and each history item as a soft token,
  optionally followed by the item's title; the placeholder positions are overwritten by ``scatter_soft_tokens``
  (one vectorised ``masked_scatter`` per kind, no loop over tokens).
* The **item head** maps the last position's hidden state to a query ``q = W_h h`` and every item to
  ``v_i = W_f f_i + W_t t_i`` (its WALS factor and its text embedding, both frozen inputs), so any item with a
  factor or a text is rankable; ``score(u, i) = s * q . v_i`` over all items (``s`` a learned scale).
  With ``user_skip`` the query also holds the user's fold-in factor and the item vector the item's factor as they
  are (``q = [u, 0] + W_h h``, ``v_i = [f_i, 0] + W_t t_i``; ``W_h``, ``W_t`` start at zero), so the model starts
  as the WALS score ``u . f_i`` and learns what the LLM and the text add to it: a residual on the collaborative
  model (our addition to the paper; ``user_skip=false`` is the paper's head).
* Training (``pipelines.training.llmrec``): stage 1 trains projectors and head with the backbone frozen; stage 2
  adds LoRA adapters (``add_lora``: peft's ``LoraConfig`` injected into the backbone in place).
* Assembly: ``LLMRec.from_pretrained(cfg, path, item_factors, item_text)`` loads a Hugging Face decoder, cuts it
  to ``cfg.layers``, freezes it and attaches the MP-Head; ``add_lora``, ``load_trained`` (a trained recommender's
  weights, whatever wraps the layers now) and ``reason_writer`` (the causal LM, full depth, with the trained LoRA)
  own every rule about the state dict's names, so no caller edits keys.

* With ``retrieval`` the prompt leads with retrieved documents (their tokens marked ``DOC``); with
  ``retrieval=mp_head`` an MP-Head (``models.mp_head``) at decoder layer ``mp_head.layer`` attends over them.

Inputs are built by the caller; ``kinds`` marks each position: 0 text, 1 the user's soft token, 2 an item's,
3 a retrieved document's token.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.configs import LLMRecConfig
from models.mp_head import attach_mp_head
from models.sasrec import never_candidates

TEXT, USER, ITEM, DOC = 0, 1, 2, 3


class Projector(nn.Module):
    """2-layer MLP from factor space into the backbone's input-embedding space."""

    def __init__(self, d_in: int, hidden: int, d_out: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_in, hidden), nn.GELU(), nn.Linear(hidden, d_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., d_in) -> (..., d_out)
        return self.net(x)


class ItemHead(nn.Module):
    """Query from the hidden state (and, with ``skip``, the user's factor); item vectors from factor and text."""

    def __init__(self, d_model: int, factor_dim: int, text_dim: int, d_head: int, skip: bool) -> None:
        super().__init__()
        assert not skip or d_head >= factor_dim, "the skip needs head_dim >= the WALS factor size"
        self.pad = d_head - factor_dim
        self.skip = skip
        self.query_proj = nn.Linear(d_model, d_head)
        self.factor_proj = None if skip else nn.Linear(factor_dim, d_head, bias=False)
        self.text_proj = nn.Linear(text_dim, d_head, bias=False)
        self.align_proj = nn.Linear(text_dim, d_head, bias=False)               # text -> query space, for alignment
        self.log_scale = nn.Parameter(torch.zeros(1))                            # s = exp(log_scale); 1-d for DeepSpeed
        if skip:  # start as the collaborative score u . f_i: the LLM's and the text's parts are learned from zero
            for lin in (self.query_proj, self.text_proj):
                nn.init.zeros_(lin.weight)
            nn.init.zeros_(self.query_proj.bias)

    def query(self, hidden: torch.Tensor, user_factor: torch.Tensor | None = None) -> torch.Tensor:
        """hidden (B, D), user_factor (B, F) -> (B, d_head), the scale folded in. The hidden state is normalised
        (zero mean, unit variance, / sqrt(D)) so an optimiser step moves the query by a bounded amount whatever the
        backbone's output scale."""
        d = hidden.shape[-1]
        q = self.query_proj(F.layer_norm(hidden, (d,)) / d ** 0.5)
        if self.skip:
            assert user_factor is not None, "the skip needs the user's factor"
            q = q + F.pad(user_factor.to(q.dtype), (0, self.pad))
        return q * self.log_scale.exp()

    def items(self, factors: torch.Tensor, texts: torch.Tensor) -> torch.Tensor:
        """factors (N + 1, F), texts (N + 1, Dt) -> (N + 1, d_head); row 0 (padding) stays zero (no bias)."""
        part = F.pad(factors, (0, self.pad)) if self.skip else self.factor_proj(factors)
        return part + self.text_proj(texts)


def scatter_soft_tokens(emb: torch.Tensor, kinds: torch.Tensor, user: torch.Tensor | None,
                        items: torch.Tensor | None) -> torch.Tensor:
    """Overwrite the placeholder rows of ``emb`` (B, T, D) with soft tokens, in reading order.

    ``kinds`` (B, T): USER positions take ``user`` (B, D) one per row; ITEM positions take ``items`` (M, D), M = the
    number of ITEM positions, filled row by row, left to right.
    """
    if user is not None:
        mask = kinds == USER                                                    # (B, T)
        assert int(mask.sum()) == user.shape[0], "one USER position per row"
        emb = emb.masked_scatter(mask.unsqueeze(-1), user.to(emb.dtype))
    if items is not None:
        mask = kinds == ITEM
        assert int(mask.sum()) == items.shape[0], "as many ITEM positions as item soft tokens"
        emb = emb.masked_scatter(mask.unsqueeze(-1), items.to(emb.dtype))
    return emb


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T) positions that ignore left padding: the first real token of every row is position 0."""
    return (attention_mask.long().cumsum(1) - 1).clamp(min=0)


class Pretrained(NamedTuple):
    """What ``LLMRec.from_pretrained`` loaded besides the decoder: the causal LM (the decoder with its LM head),
    its tokenizer, the directory, and an identity of the weights (directory name, config hash, depth kept)."""

    causal: Any
    tokenizer: Any
    path: Path
    ident: str


def load_causal(path: Path, layers: int) -> Pretrained:
    """The causal LM and tokenizer in the Hugging Face directory ``path``, cut to its first ``layers`` decoder
    layers (0 = all) and frozen (LoRA adds the trainable weights)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not (path / "config.json").exists():
        raise FileNotFoundError(f"llmrec.model_path={path} is not a Hugging Face model directory (no config.json); "
                                "point it at a directory saved by save_pretrained, or leave it empty for SmolLM2")
    tok = AutoTokenizer.from_pretrained(path)
    causal = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    n = len(causal.model.layers)
    if layers and layers < n:
        causal.model.layers = torch.nn.ModuleList(list(causal.model.layers)[:layers])
        causal.config.num_hidden_layers = layers
    causal.requires_grad_(False)
    digest = hashlib.sha256((path / "config.json").read_bytes()).hexdigest()[:12]
    return Pretrained(causal, tok, path, f"{path.name}:{digest}:layers={min(layers or n, n)}")


class LLMRec(nn.Module):
    @classmethod
    def from_pretrained(cls, cfg: LLMRecConfig, path: Path, item_factors: torch.Tensor,
                        item_text: torch.Tensor) -> "LLMRec":
        """The recommender over the decoder in the Hugging Face directory ``path`` (``load_causal``: cut to
        ``cfg.layers``, frozen; the MP-Head attached with ``cfg.retrieval = mp_head``). ``pretrained`` keeps the
        causal LM, tokenizer and identity."""
        pre = load_causal(Path(path), cfg.layers)
        model = cls(cfg, pre.causal.model, item_factors, item_text)
        model.pretrained = pre
        return model

    def __init__(self, cfg: LLMRecConfig, backbone: nn.Module, item_factors: torch.Tensor,
                 item_text: torch.Tensor) -> None:
        """``backbone``: a decoder that takes ``inputs_embeds`` (a Hugging Face ``LlamaModel``, say);
        ``item_factors`` (N + 1, F) and ``item_text`` (N + 1, Dt): frozen item features, row 0 = padding."""
        super().__init__()
        assert item_factors.shape[0] == item_text.shape[0], "item tables (N + 1, .)"
        self.cfg = cfg
        self.backbone = backbone
        d = backbone.get_input_embeddings().embedding_dim
        f_dim, t_dim = item_factors.shape[1], item_text.shape[1]
        self.register_buffer("item_factors", item_factors.float(), persistent=False)
        self.register_buffer("item_text", item_text.float(), persistent=False)
        self.user_proj = Projector(f_dim, cfg.projector_hidden, d) if cfg.soft_tokens else None
        self.item_proj = Projector(f_dim, cfg.projector_hidden, d) if cfg.soft_tokens else None
        self.head = ItemHead(d, f_dim, t_dim, cfg.head_dim, cfg.user_skip and cfg.soft_tokens)
        self.mp_head = attach_mp_head(backbone, cfg.mp_head) if cfg.retrieval == "mp_head" else None
        self.pretrained: Pretrained | None = None
        self.has_lora = False

    def add_lora(self) -> None:
        """Inject LoRA adapters into the backbone (``add_lora``), once."""
        if not self.has_lora:
            add_lora(self.backbone, self.cfg)
            self.has_lora = True

    def load_trained(self, state: dict[str, torch.Tensor]) -> bool:
        """Start from a trained recommender's weights (its ``best.pt``: projectors, head and, when present, LoRA
        adapters, injected first): names as a recommender without an MP-Head saves them; the layer an MP-Head wraps
        here is found under the wrapper (its own weights start fresh, its gate at 0, so this module then computes
        what the trained one did). Raises ``ValueError`` naming weights this module has no place for. Returns
        whether the state held LoRA weights."""
        lora = any("lora_" in k for k in state)
        if lora:
            self.add_lora()
        if self.mp_head is not None:                                            # the wrapped layer's own weights
            at = f"backbone.layers.{self.cfg.mp_head.layer - 1}.self_attn."
            state = {(at + "base." + k[len(at):] if k.startswith(at) else k): v for k, v in state.items()}
        unexpected = self.load_state_dict(state, strict=False).unexpected_keys
        if unexpected:
            raise ValueError(f"weights this model does not have: {unexpected[:3]} (a different backbone, layers, "
                             "LoRA targets or head size?)")
        return lora

    def reason_writer(self) -> nn.Module:
        """The causal LM that writes reasons: ``pretrained``'s own when the backbone has its full depth (on the
        backbone's device and dtype), else the full-depth model loaded again with the trained LoRA weights in its
        first layers (a cut model cannot write)."""
        assert self.pretrained is not None, "reason_writer needs a model built by from_pretrained"
        pre = self.pretrained
        if len(self.backbone.layers) == json.loads((pre.path / "config.json").read_text()).get("num_hidden_layers"):
            p = next(self.backbone.parameters())                               # on a GPU, in bf16: the LM head too
            return pre.causal.to(device=p.device, dtype=p.dtype)
        full = load_causal(pre.path, 0)
        if self.has_lora:
            add_lora(full.causal.model, self.cfg)
            lora = {k.replace("self_attn.base.", "self_attn."): v for k, v in self.backbone.state_dict().items()
                    if "lora_" in k}
            unexpected = full.causal.model.load_state_dict(lora, strict=False).unexpected_keys
            if unexpected:
                raise ValueError(f"LoRA weights without a place in the full model: {unexpected[:3]}")
        return full.causal

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, kinds: torch.Tensor,
                user_factor: torch.Tensor | None = None, hist: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids/attention_mask/kinds (B, T), left-padded; user_factor (B, F) the user's fold-in factor;
        hist (B, K) the history items whose soft tokens fill the ITEM positions in order (0 = none) -> q (B, d_head).
        """
        B, T = input_ids.shape
        assert attention_mask.shape == kinds.shape == (B, T), "input_ids, attention_mask and kinds are (B, T)"
        emb = self.backbone.get_input_embeddings()(input_ids)                  # (B, T, D)
        soft_user = None
        if self.cfg.soft_tokens:
            assert user_factor is not None and hist is not None, "soft tokens need user_factor and hist"
            dtype = self.user_proj.net[0].weight.dtype                          # bf16 under DeepSpeed; inputs fp32
            soft_user = self.user_proj(user_factor.to(dtype))                   # (B, D)
            soft_items = self.item_proj(self.item_factors[hist[hist > 0]].to(dtype))  # (M, D), reading order
            emb = scatter_soft_tokens(emb, kinds, soft_user, soft_items)
        if self.mp_head is not None:
            with self.mp_head.documents(kinds == DOC):
                out = self.backbone(inputs_embeds=emb, attention_mask=attention_mask,
                                    position_ids=position_ids(attention_mask), use_cache=False)
        else:
            out = self.backbone(inputs_embeds=emb, attention_mask=attention_mask,
                                position_ids=position_ids(attention_mask), use_cache=False)
        hidden = out.last_hidden_state[:, -1, :]                                # (B, D): left padding, last = newest
        return self.head.query(hidden.to(self.head.query_proj.weight.dtype), user_factor)

    def item_table(self) -> torch.Tensor:
        """(N + 1, d_head) item vectors the queries are scored against."""
        w = self.head.text_proj.weight
        return self.head.items(self.item_factors.to(w.dtype), self.item_text.to(w.dtype))


def add_lora(backbone: nn.Module, cfg: LLMRecConfig) -> nn.Module:
    """Inject LoRA adapters (peft's own ``LoraConfig``) into ``backbone`` in place; B is zero-initialised, so the
    adapted backbone computes exactly what the base one does until it is trained. The adapters become trainable;
    the backbone's own weights stay frozen, and parameters that were trainable before (an MP-Head's) stay so."""
    from peft import LoraConfig, inject_adapter_in_model

    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=list(cfg.lora_targets))
    trainable = {id(p) for p in backbone.parameters() if p.requires_grad}     # an MP-Head's, say: they stay so
    backbone = inject_adapter_in_model(lora, backbone)
    for name, p in backbone.named_parameters():
        p.requires_grad_("lora_" in name or id(p) in trainable)
    return backbone


def ranking_loss(q: torch.Tensor, items: torch.Tensor, targets: torch.Tensor, normaliser: float,
                 negatives: torch.Tensor | None = None, exclude: torch.Tensor | None = None) -> torch.Tensor:
    """Summed cross-entropy of each query's target over all items (padding and the ``exclude`` items, (N + 1,)
    bool, never candidates: ``models.sasrec.never_candidates``), divided by ``normaliser``; with ``negatives``
    (B, n) a sampled softmax over [target, negatives] instead (the caller draws no excluded item).

    q (B, d), items (N + 1, d), targets (B,) item ids.
    """
    if negatives is None:
        logits = never_candidates(q @ items.T, exclude)                         # (B, N + 1)
        return F.cross_entropy(logits, targets, reduction="sum") / normaliser
    cand = torch.cat([targets[:, None], negatives], dim=1)                      # (B, 1 + n)
    logits = (q[:, None, :] * items[cand]).sum(-1)                              # (B, 1 + n)
    return F.cross_entropy(logits, torch.zeros_like(targets), reduction="sum") / normaliser


def info_nce(q: torch.Tensor, keys: torch.Tensor, temperature: float, normaliser: float) -> torch.Tensor:
    """InfoNCE with in-batch negatives: row b of ``q`` (B, d) should match row b of ``keys`` (B, d) (cosine)."""
    logits = F.normalize(q, dim=-1) @ F.normalize(keys, dim=-1).T / temperature  # (B, B)
    return F.cross_entropy(logits, torch.arange(len(q), device=q.device), reduction="sum") / normaliser
