"""Rationales and their token scores for WebRec's queries: greedy generation with a Hugging Face causal LM, then
one teacher-forced pass over prompt + rationale with eager attention.

For greedy decoding with the same weights, the teacher-forced pass gives exactly the attention rows and the
predictive distributions the model had while generating (a causal model's position ``t`` sees only tokens ``<= t``),
so the scores are computed in one batched pass instead of step by step; a unit test checks this against a
step-by-step generation with eager attention on a tiny model. The pass itself runs the model's fast attention
kernel; only the chosen layers' attention probabilities are recomputed, from their captured inputs (a forward
pre-hook), so the other layers never materialise a (T, T) matrix. Rows are left-padded; position ids skip the
padding.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from features.query_scoring import attention_scores, entropies
from pipelines.backends.llm import render_chat, require_hf_dir


@dataclass
class Rationale:
    text: str
    pieces: list[str]           # the generated tokens (EOS excluded), each the text it adds (pieces_of)
    attention: np.ndarray       # (G,) s_attn
    entropy: np.ndarray         # (G,) s_ent, nats


class RationaleWriter:
    def __init__(self, model_dir: Path | None = None, max_new_tokens: int = 32, batch_size: int = 16,
                 layers: tuple[int, ...] = (-1,), model=None, tokenizer=None) -> None:
        """``model_dir``: a HF causal-LM directory (or ``model``/``tokenizer`` already loaded, for tests);
        ``layers``: decoder layers whose attentions are averaged (negative: from the end)."""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if model is None:
            require_hf_dir(Path(model_dir))
            tokenizer = AutoTokenizer.from_pretrained(model_dir)
            model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        self.model, self.tok = model.eval(), tokenizer
        self.tok.padding_side = "left"
        if self.tok.pad_token is None:
            self.tok.pad_token = self.tok.eos_token
        n = model.config.num_hidden_layers
        bad = [x for x in layers if not -n <= x < n]
        if bad:
            raise ValueError(f"web.attention_layers {bad} outside the model's {n} decoder layers (0..{n - 1} or "
                             f"-{n}..-1)")
        self.layers = sorted({x % n for x in layers})
        self.max_new_tokens, self.batch_size = max_new_tokens, batch_size
        self.eos = {model.generation_config.eos_token_id, self.tok.eos_token_id} - {None}
        self.eos = {t for e in self.eos for t in (e if isinstance(e, list) else [e])}
        self.seconds = {"generate": 0.0, "score": 0.0}
        self.tokens = 0

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        return self.tok(render_chat(self.tok, messages), add_special_tokens=False)["input_ids"]

    def __call__(self, prompts: list[list[int]]) -> list[Rationale]:
        """Rationales of token-id ``prompts`` (in order), generated in length-sorted batches."""
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        out: list[Rationale | None] = [None] * len(prompts)
        for lo in range(0, len(order), self.batch_size):
            idx = order[lo:lo + self.batch_size]
            for i, r in zip(idx, self._batch([prompts[i] for i in idx]), strict=True):
                out[i] = r
        return out  # type: ignore[return-value]

    def _batch(self, prompts: list[list[int]]) -> list[Rationale]:
        import torch

        pad = self.tok.pad_token_id
        p = max(len(x) for x in prompts)
        ids = torch.tensor([[pad] * (p - len(x)) + x for x in prompts])
        mask = torch.tensor([[0] * (p - len(x)) + [1] * len(x) for x in prompts])
        t0 = time.perf_counter()
        with torch.inference_mode():
            gen = self.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=self.max_new_tokens,
                                      do_sample=False, pad_token_id=pad)
        new = gen[:, p:]                                                   # (B, <= max_new_tokens)
        lens = []
        for row in new.tolist():
            lens.append(next((j for j, t in enumerate(row) if t in self.eos), len(row)))
        t1 = time.perf_counter()
        g = max(lens + [1])
        full = gen[:, : p + g]                                             # (B, P + G)
        fmask = torch.cat([mask, (torch.arange(g)[None, :] < torch.tensor(lens)[:, None]).long()], 1)
        att, logits = teacher_forced(self.model, self.layers, full, fmask, p, g)
        self.seconds["generate"] += t1 - t0
        self.seconds["score"] += time.perf_counter() - t1
        res = []
        for b, n in enumerate(lens):
            toks = new[b, :n].tolist()
            self.tokens += n
            a = att[b, : p + n, : p + n].float().numpy()
            res.append(Rationale(self.tok.decode(toks, skip_special_tokens=True).strip(),
                                 pieces_of(self.tok, toks), attention_scores(a, p),
                                 entropies(logits[b, :n].float().numpy())))
        return res


def pieces_of(tok, ids: list[int]) -> list[str]:
    """Each token of ``ids`` as the text it adds to the decoded sequence, the space before it included: a byte-level
    BPE token (SmolLM2's) carries its space, a WordPiece one (BERT's) gets it from the decoder, so each piece is
    what the decoded prefix grows by (the token decoded alone where the prefix is not kept, e.g. a split
    character)."""
    out, prev = [], ""
    for i, t in enumerate(ids):
        cur = tok.decode(ids[:i + 1], skip_special_tokens=True)
        out.append(cur[len(prev):] if cur.startswith(prev) else tok.decode([t]))
        prev = cur
    return out


def teacher_forced(model, layers: list[int], full, fmask, start: int, g: int):
    """One pass of ``model`` (a HF causal LM) over ``full`` (B, T) left-padded ids with ``fmask`` (B, T), the prompt
    being the first ``start`` columns. Returns ``(att, logits)``: (B, T, T) attention probabilities of ``layers``
    averaged over layers and heads, and (B, g, V) the logits from which the generated tokens ``start..start+g-1``
    were drawn. The layers run their own (fast) kernel; the chosen layers' probabilities are recomputed from their
    captured inputs exactly as eager attention computes them (RoPE, scaling, causal + padding mask)."""
    import torch
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    mods = [model.model.layers[i].self_attn for i in layers]
    captured: dict = {}

    def hook(i):
        return lambda mod, args, kw: captured.__setitem__(i, (kw["hidden_states"] if "hidden_states" in kw
                                                               else args[0], kw["position_embeddings"]))

    handles = [m.register_forward_pre_hook(hook(i), with_kwargs=True) for i, m in enumerate(mods)]
    pos = (fmask.cumsum(1) - 1).clamp(min=0)
    try:
        with torch.inference_mode():
            out = model.model(input_ids=full, attention_mask=fmask, position_ids=pos, use_cache=False)
            logits = model.lm_head(out.last_hidden_state[:, start - 1: start - 1 + g])     # (B, g, V)
            b, t = full.shape
            allowed = torch.tril(torch.ones(t, t, dtype=torch.bool))[None] & fmask.bool()[:, None, :]  # (B, T, T)
            total = torch.zeros(b, t, t)
            for i, attn in enumerate(mods):
                h, (cos, sin) = captured[i]
                q = attn.q_proj(h).view(b, t, -1, attn.head_dim).transpose(1, 2)     # (B, H, T, hd)
                k = attn.k_proj(h).view(b, t, -1, attn.head_dim).transpose(1, 2)     # (B, KV, T, hd)
                q, k = apply_rotary_pos_emb(q, k, cos, sin)
                k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)             # (B, H, T, hd)
                s = (q @ k.transpose(-1, -2)) * attn.scaling                         # (B, H, T, T)
                p = torch.softmax(s.masked_fill(~allowed[:, None], float("-inf")), -1).nan_to_num(0.0)
                total += p.mean(1).float()
    finally:
        for hd in handles:
            hd.remove()
    return total / len(mods), logits
