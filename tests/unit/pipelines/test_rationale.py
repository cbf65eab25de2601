"""Attention x entropy scores from one batched, left-padded teacher-forced pass equal those of a step-by-step greedy
generation with eager attention (a tiny random Llama, no download)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from features.query_scoring import attention_scores, entropies
from pipelines.backends.rationale import teacher_forced


def tiny(attn: str) -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=64, attn_implementation=attn)
    return LlamaForCausalLM._from_config(cfg).eval()


def step_by_step(model, prompt: list[int], g: int, layers: list[int]) -> tuple[list[int], np.ndarray, np.ndarray]:
    """Greedy generation one token at a time; the attention row of each generated token is read when that token is
    the newest input, the entropy from the distribution it was drawn from."""
    seq, rows, ents = list(prompt), {}, []
    with torch.no_grad():
        for step in range(g + 1):
            out = model(torch.tensor([seq]), output_attentions=True)
            if step:                                                            # the row of the newest token
                att = torch.stack([out.attentions[i][0, :, -1] for i in layers]).mean((0, 1))  # (len(seq),)
                rows[len(seq) - 1] = att.numpy()
            if step == g:
                break
            logits = out.logits[0, -1]
            p = torch.softmax(logits.double(), -1)
            ents.append(float(-(p * p.log()).sum()))
            seq.append(int(logits.argmax()))
    start = len(prompt)
    gen = seq[start:]
    s_attn = np.array([max([rows[j][i] for j in range(i + 1, len(seq))], default=0.0)
                       for i in range(start, len(seq))])
    return gen, s_attn, np.array(ents)


@pytest.mark.parametrize("layers", [[2], [0, 2]])
def test_batched_teacher_forced_scores_equal_step_by_step_generation(layers):
    eager, fast = tiny("eager"), tiny("sdpa")
    prompts, g = [[5, 9, 12], [7, 3, 22, 4, 8, 30]], 6
    refs = [step_by_step(eager, p, g, layers) for p in prompts]
    width = max(len(p) for p in prompts)
    full = torch.tensor([[0] * (width - len(p)) + p + r[0] for p, r in zip(prompts, refs, strict=True)])
    fmask = torch.tensor([[0] * (width - len(p)) + [1] * (len(p) + g) for p in prompts])
    att, logits = teacher_forced(fast, layers, full, fmask, width, g)
    for b, (gen, s_attn, s_ent) in enumerate(refs):
        assert logits[b].argmax(-1).tolist() == gen                            # the same greedy tokens
        got_attn = attention_scores(att[b].numpy(), width)
        assert np.allclose(got_attn, s_attn, atol=1e-5)
        assert np.allclose(entropies(logits[b].double().numpy()), s_ent, atol=1e-5)
        assert got_attn[-1] == 0.0 and (got_attn[:-1] > 0).all()


def test_padding_columns_get_no_attention():
    model = tiny("sdpa")
    full = torch.tensor([[0, 0, 5, 9, 12, 4]])
    fmask = torch.tensor([[0, 0, 1, 1, 1, 1]])
    att, _ = teacher_forced(model, [1], full, fmask, 5, 1)
    assert torch.all(att[0, :, :2] == 0) and torch.allclose(att[0, 2:].sum(-1), torch.ones(4))


def test_pieces_carry_the_space_before_each_word_for_a_wordpiece_tokenizer_too():
    """A WordPiece token decoded alone has no space before it (BERT's decoder adds it): pieces are what each token
    adds to the decoded text, so the words of the query are the rationale's words, never several glued into one."""
    from transformers import AutoTokenizer

    from features.query_scoring import merge_words
    from pipelines.backends.rationale import pieces_of
    from pipelines.backends.weights import default_encoder_dir

    tok = AutoTokenizer.from_pretrained(default_encoder_dir())
    ids = tok("guarantee turnpike mall, unbelievably worst", add_special_tokens=False)["input_ids"]
    pieces = pieces_of(tok, ids)
    assert len(pieces) == len(ids) and "".join(pieces) == tok.decode(ids)
    assert [w for w, _ in merge_words(pieces, np.ones(len(pieces)))] == [
        "guarantee", "turnpike", "mall", ",", "unbelievably", "worst"]
    assert [tok.decode([t]) for t in ids][1] == "turnpike"                    # alone: no space, so it would glue
