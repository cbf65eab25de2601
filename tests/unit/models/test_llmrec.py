"""The LLM recommender's modules on a tiny random Llama built from a config (no download): soft-token scatter,
padding, the item head, LoRA's zero start, the losses."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from models.configs import LLMRecConfig
from models.llmrec import ITEM, TEXT, USER, LLMRec, add_lora, info_nce, ranking_loss, scatter_soft_tokens

N_ITEMS, F, DT = 12, 6, 5


def tiny_llama(seed: int = 0, vocab_size: int = 50) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM._from_config(cfg).eval()


SMALL = LLMRecConfig(projector_hidden=16, head_dim=8, lora_dropout=0.0)


def model(cfg: LLMRecConfig = SMALL) -> LLMRec:
    g = torch.Generator().manual_seed(1)
    factors, text = torch.randn(N_ITEMS + 1, F, generator=g), torch.randn(N_ITEMS + 1, DT, generator=g)
    factors[0] = text[0] = 0
    causal = tiny_llama()
    causal.requires_grad_(False)
    torch.manual_seed(2)
    return LLMRec(cfg, causal.model, factors, text).eval()


def batch(pad: int = 0) -> dict[str, torch.Tensor]:
    """Two prompts: [t t U t I t I t] and [t U t I t t t t], left-padded by ``pad`` columns."""
    kinds = torch.tensor([[TEXT, TEXT, USER, TEXT, ITEM, TEXT, ITEM, TEXT],
                          [TEXT, USER, TEXT, ITEM, TEXT, TEXT, TEXT, TEXT]], dtype=torch.int8)
    ids = torch.arange(16).view(2, 8) % 50 + 3
    hist = torch.tensor([[0, 4, 9], [0, 0, 7]])
    mask = torch.ones(2, 8, dtype=torch.long)
    if pad:
        z = torch.zeros(2, pad, dtype=torch.long)
        ids, kinds, mask = torch.cat([z, ids], 1), torch.cat([z.to(torch.int8), kinds], 1), torch.cat([z, mask], 1)
    return {"input_ids": ids, "attention_mask": mask, "kinds": kinds, "hist": hist,
            "user_factor": torch.randn(2, F, generator=torch.Generator().manual_seed(3))}


def test_scatter_puts_each_soft_token_at_its_placeholder_in_reading_order():
    emb = torch.zeros(2, 8, 3)
    kinds = batch()["kinds"]
    user = torch.tensor([[1.0, 1, 1], [2, 2, 2]])
    items = torch.tensor([[10.0, 0, 0], [11, 0, 0], [12, 0, 0]])             # row 0: two items, row 1: one
    out = scatter_soft_tokens(emb, kinds, user, items)
    assert out[0, 2].tolist() == [1, 1, 1] and out[1, 1].tolist() == [2, 2, 2]
    assert out[0, 4, 0] == 10 and out[0, 6, 0] == 11 and out[1, 3, 0] == 12
    assert (out[kinds == TEXT] == 0).all()                                      # text positions untouched
    with pytest.raises(AssertionError, match="ITEM positions"):
        scatter_soft_tokens(emb, kinds, user, items[:2])


def test_the_soft_tokens_are_the_projected_factors_of_the_history_items():
    m = model()
    seen = {}
    m.backbone.register_forward_pre_hook(lambda mod, args, kw: seen.update(emb=kw["inputs_embeds"]), with_kwargs=True)
    b = batch()
    m(**b)
    with torch.no_grad():
        assert torch.allclose(seen["emb"][0, 4], m.item_proj(m.item_factors[4])) and \
            torch.allclose(seen["emb"][0, 6], m.item_proj(m.item_factors[9]))
        assert torch.allclose(seen["emb"][1, 3], m.item_proj(m.item_factors[7]))
        assert torch.allclose(seen["emb"][1, 1], m.user_proj(b["user_factor"][1]))


def test_left_padding_changes_nothing():
    m = model()
    with torch.no_grad():
        assert torch.allclose(m(**batch()), m(**batch(pad=3)), atol=1e-5)


def test_head_scores_are_a_dense_dot_product():
    m = model(LLMRecConfig(projector_hidden=16, head_dim=8, user_skip=False))       # the paper's head
    with torch.no_grad():
        m.head.log_scale.fill_(0.5)
        q, items = m(**batch()), m.item_table()
        h = m.head
        manual = torch.stack([h.factor_proj.weight @ m.item_factors[i] + h.text_proj.weight @ m.item_text[i]
                              for i in range(N_ITEMS + 1)])
        assert torch.allclose(items, manual, atol=1e-6) and torch.equal(items[0], torch.zeros(8))
        scores = q @ items.T
        assert torch.allclose(scores[1, 5], (q[1] * manual[5]).sum(), atol=1e-6)


def test_zero_initialised_lora_gives_the_base_model_at_step_0():
    m = model()
    causal_logits = None
    with torch.no_grad():
        before = m(**batch())
        ids = torch.tensor([[5, 6, 7, 8]])
        causal_logits = m.backbone(input_ids=ids).last_hidden_state
    add_lora(m.backbone, m.cfg)
    names = [n for n, p in m.backbone.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n for n in names)
    assert {n.split(".")[-4] for n in names} == {"q_proj", "k_proj", "v_proj", "o_proj"}
    with torch.no_grad():
        assert torch.equal(m(**batch()), before)
        assert torch.equal(m.backbone(input_ids=ids).last_hidden_state, causal_logits)


def test_titles_only_model_has_no_projectors_and_no_skip():
    m = model(LLMRecConfig(soft_tokens=False, projector_hidden=16, head_dim=8))
    assert m.user_proj is None and m.item_proj is None and not m.head.skip
    b = batch()
    b["kinds"] = torch.zeros_like(b["kinds"])
    with torch.no_grad():
        assert m(b["input_ids"], b["attention_mask"], b["kinds"]).shape == (2, 8)


def test_losses_by_hand():
    q = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    items = torch.tensor([[9.0, 9.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])    # row 0 is padding: never a candidate
    targets = torch.tensor([1, 2])
    # user 0: logits items 1..3 = 1, 0, 1 -> -log(e / (2e + 1)); user 1: 0, 2, 2 -> -log(e^2 / (2e^2 + 1))
    by_hand = -math.log(math.e / (2 * math.e + 1)) - math.log(math.e ** 2 / (2 * math.e ** 2 + 1))
    assert ranking_loss(q, items, targets, normaliser=2.0).item() == pytest.approx(by_hand / 2, rel=1e-6)
    negs = torch.tensor([[2], [1]])                                              # sampled: target vs one negative
    sampled = -math.log(math.e / (math.e + 1)) - math.log(math.e ** 2 / (math.e ** 2 + 1))
    assert ranking_loss(q, items, targets, 1.0, negs).item() == pytest.approx(sampled, rel=1e-6)
    keys = torch.tensor([[2.0, 0.0], [0.0, 3.0]])                                # cosine 1 with its own row, 0 else
    nce = 2 * -math.log(math.exp(10) / (math.exp(10) + 1))
    assert info_nce(q, keys, temperature=0.1, normaliser=1.0).item() == pytest.approx(nce, rel=1e-3)  # float32


def test_with_the_skip_an_untrained_model_scores_the_wals_dot_product():
    m = model()
    b = batch()
    with torch.no_grad():
        scores = m(**b) @ m.item_table().T                                     # (2, N + 1)
    wals = b["user_factor"] @ m.item_factors.T                                   # u . f_i
    assert torch.allclose(scores, wals, atol=1e-5)
    with torch.no_grad():                                                        # what training adds: text and LLM
        m.head.text_proj.weight.normal_()
        m.head.query_proj.weight.normal_()
        assert not torch.allclose(m(**b) @ m.item_table().T, wals, atol=1e-3)


def test_runs_with_bf16_weights_and_fp32_feature_tables():
    """DeepSpeed's bf16 (ZeRO-2 on GPUs) casts the parameters, not the frozen factor/text buffers or the inputs."""
    m = model()
    with torch.no_grad():
        want = m(**batch()) @ m.item_table().T
    for p in m.parameters():
        p.data = p.data.bfloat16()
    assert m.item_factors.dtype == torch.float32
    with torch.no_grad():
        got = m(**batch()) @ m.item_table().T                                  # user_factor stays float32
    assert got.dtype == torch.bfloat16 and torch.allclose(got.float(), want, atol=0.1, rtol=0.05)


# ----------------------------------------------------------------------------- assembly from the config

@pytest.fixture(scope="module")
def saved_llama(tmp_path_factory):
    """A 3-layer tiny Llama and a tokenizer saved as a Hugging Face directory, as a user's own model would be."""
    from transformers import AutoTokenizer

    from pipelines.backends.weights import default_encoder_dir

    path = tmp_path_factory.mktemp("llama")
    tok = AutoTokenizer.from_pretrained(default_encoder_dir())
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    LlamaForCausalLM._from_config(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def tables():
    g = torch.Generator().manual_seed(1)
    factors, text = torch.randn(N_ITEMS + 1, F, generator=g), torch.randn(N_ITEMS + 1, DT, generator=g)
    factors[0] = text[0] = 0
    return factors, text


def trained_state(m: LLMRec) -> dict:
    """What best.pt keeps (the trainable weights), after moving every one of them off its start."""
    with torch.no_grad():
        for p in m.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    return {k: v.clone() for k, v in m.state_dict().items()
            if k in {n for n, p in m.named_parameters() if p.requires_grad}}


def test_from_pretrained_cuts_freezes_and_names_the_backbone(saved_llama):
    m = LLMRec.from_pretrained(LLMRecConfig(projector_hidden=16, head_dim=8, layers=2), saved_llama, *tables())
    assert len(m.backbone.layers) == 2 and m.pretrained.ident.endswith(":layers=2")
    assert not any(p.requires_grad for p in m.backbone.parameters())
    assert m.pretrained.tokenizer("a shopper")["input_ids"]
    whole = LLMRec.from_pretrained(LLMRecConfig(projector_hidden=16, head_dim=8, layers=0), saved_llama, *tables())
    assert len(whole.backbone.layers) == 3 and whole.pretrained.ident != m.pretrained.ident
    with pytest.raises(FileNotFoundError, match="no config.json"):
        LLMRec.from_pretrained(LLMRecConfig(), saved_llama / "missing", *tables())


def test_trained_weights_load_into_a_model_with_an_mp_head_and_it_computes_what_they_did(saved_llama):
    cfg = LLMRecConfig(projector_hidden=16, head_dim=8, layers=2, lora_dropout=0.0)
    torch.manual_seed(3)
    a = LLMRec.from_pretrained(cfg, saved_llama, *tables()).eval()
    a.add_lora()
    a.add_lora()                                                          # once only
    state = trained_state(a)
    assert any("lora_" in k for k in state)
    b = LLMRec.from_pretrained(dataclasses.replace(cfg, retrieval="mp_head"), saved_llama, *tables()).eval()
    assert b.load_trained(state) and b.has_lora
    with torch.no_grad():
        assert torch.allclose(a(**batch()), b(**batch()), atol=1e-5)    # the MP-Head's gate starts at 0
    with pytest.raises(ValueError, match="does not have"):
        b.load_trained({**state, "head.nope": torch.zeros(1)})


def test_the_reason_writer_is_the_full_depth_lm_with_the_trained_lora(saved_llama):
    cfg = LLMRecConfig(projector_hidden=16, head_dim=8, layers=2, lora_dropout=0.0)
    m = LLMRec.from_pretrained(cfg, saved_llama, *tables())
    m.add_lora()
    trained_state(m)
    writer = m.reason_writer()
    assert len(writer.model.layers) == 3
    mine = {k: v for k, v in m.backbone.state_dict().items() if "lora_" in k}
    theirs = writer.model.state_dict()
    assert mine and all(torch.equal(theirs[k], v) for k, v in mine.items())
    whole = LLMRec.from_pretrained(dataclasses.replace(cfg, layers=0), saved_llama, *tables())
    assert whole.reason_writer() is whole.pretrained.causal                # full depth: its own LM
