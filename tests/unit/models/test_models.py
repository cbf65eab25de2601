"""SASRec and GRASP on tiny configs: shapes, causality, padding, sigmoid weights, losses."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from models.configs import FieldError, GRASPConfig, SASRecConfig
from models.grasp import HolisticAttention, SigmoidAttention, build, mean_neighbours
from models.sasrec import SASRec, attention_mask, bce_loss, ce_loss

N_ITEMS, N_USERS, D, H, T = 30, 7, 12, 16, 6


def tables(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    t = {"item_sem": torch.randn(N_ITEMS + 1, D, generator=g), "item_nb": torch.randn(N_ITEMS + 1, D, generator=g),
         "user_sem": torch.randn(N_USERS, D, generator=g), "user_nb": torch.randn(N_USERS, D, generator=g)}
    t["item_sem"][0] = t["item_nb"][0] = 0
    return t


GRASP = GRASPConfig(user_neighbours=True)  # the paper's global attention, similar users included


def make(kind: str, dropout: float = 0.0, grasp: GRASPConfig = GRASP) -> SASRec:
    """``sasrec`` / ``grasp``, with ``_original`` SASRec's original block instead of the pre-norm one and with
    ``_sink`` attention to the padding."""
    torch.manual_seed(0)
    kind, *flags = kind.split("_")
    cfg = SASRecConfig(max_len=8, hidden=H, n_layers=2, n_heads=2, dropout=dropout,
                       block="original" if "original" in flags else "prenorm", attend_padding="sink" in flags)
    if kind == "sasrec":
        return SASRec(cfg, N_ITEMS).eval()
    m = SASRec(cfg, N_ITEMS, build(N_ITEMS, H, dropout, tables(), grasp))
    for a in (m.enhancer.adapter, m.enhancer.item_adapter):  # zero-initialised; give them weights as after training
        torch.nn.init.normal_(a.net[-1].weight, std=0.2)
    return m.eval()


def test_grasp_starts_as_the_plain_backbone():
    torch.manual_seed(0)
    cfg = SASRecConfig(max_len=8, hidden=H, n_heads=2, dropout=0.0)
    m = SASRec(cfg, N_ITEMS, build(N_ITEMS, H, 0.0, tables(), GRASP)).eval()
    plain = SASRec(cfg, N_ITEMS).eval()
    plain.load_state_dict({k: v for k, v in m.state_dict().items() if not k.startswith("enhancer.")})
    assert torch.allclose(m(SEQ, USERS), plain(SEQ), atol=1e-6)


SEQ = torch.tensor([[0, 0, 3, 5, 7, 9], [1, 2, 3, 4, 5, 6], [0, 0, 0, 0, 0, 11]])
USERS = torch.tensor([0, 3, 6])


@pytest.mark.parametrize("kind", ["sasrec", "grasp", "sasrec_original", "grasp_original", "sasrec_original_sink",
                                  "grasp_sink"])
def test_shapes(kind):
    m = make(kind)
    h = m(SEQ, USERS)
    assert h.shape == (3, T, H)
    assert m.item_table().shape == (N_ITEMS + 1, H)
    assert torch.isfinite(h).all()


@pytest.mark.parametrize("kind", ["sasrec", "grasp", "sasrec_original", "grasp_original", "sasrec_original_sink",
                                  "grasp_sink"])
def test_causality_changing_position_t_plus_1_leaves_earlier_outputs(kind):
    m = make(kind)
    t = 3
    changed = SEQ.clone()
    changed[:, t + 1] = torch.tensor([20, 21, 22])
    a, b = m(SEQ, USERS), m(changed, USERS)
    assert torch.allclose(a[:, : t + 1], b[:, : t + 1], atol=1e-6)
    assert not torch.allclose(a[:, t + 1], b[:, t + 1], atol=1e-4)


@pytest.mark.parametrize("kind", ["sasrec", "grasp", "sasrec_original", "grasp_original", "sasrec_original_sink",
                                  "grasp_sink"])
def test_more_left_padding_changes_nothing(kind):
    m = make(kind)
    short = torch.tensor([[3, 5, 7, 9]])
    padded = torch.tensor([[0, 0, 3, 5, 7, 9]])
    u = torch.tensor([2])
    assert torch.allclose(m(short, u)[:, -1], m(padded, u)[:, -1], atol=1e-5)


@pytest.mark.parametrize("kind", ["sasrec", "grasp", "sasrec_original", "grasp_original", "sasrec_original_sink",
                                  "grasp_sink"])
def test_padding_item_ids_do_not_leak(kind):
    """Whatever sits in padded positions' embeddings cannot reach the real positions."""
    m = make(kind)
    before = m(SEQ, USERS)
    with torch.no_grad():
        m.item_emb.weight[0] = 5.0  # padding row changed
    after = m(SEQ, USERS)
    real = SEQ != 0
    assert torch.allclose(before[real], after[real], atol=1e-5)


def test_original_block_is_the_reference_sasrec_block():
    """One ``original`` block against the reference's own formulation (SASRec.pytorch / the CE reproduction:
    torch's MultiheadAttention with the layer-normed query, raw keys and values, raw residual; then a layer norm and
    a ReLU feed-forward as wide as the input with the normed input as residual), on a sequence without padding."""
    from models.sasrec import Block, attention_mask

    torch.manual_seed(0)
    cfg = SASRecConfig(max_len=8, hidden=H, n_heads=2, dropout=0.0, block="original")
    block = Block(cfg).eval()
    mha = torch.nn.MultiheadAttention(H, 2, batch_first=True).eval()
    with torch.no_grad():
        mha.in_proj_weight.copy_(block.attn.qkv.weight)
        mha.in_proj_bias.copy_(block.attn.qkv.bias)
        mha.out_proj.weight.copy_(block.attn.proj.weight)
        mha.out_proj.bias.copy_(block.attn.proj.bias)
    x = torch.randn(2, T, H)
    causal = torch.ones(T, T, dtype=torch.bool).triu(1)  # True = may not attend
    q = block.ln1(x)
    y = mha(q, x, x, attn_mask=causal, need_weights=False)[0] + x
    h = block.ln2(y)
    ref = block.ffn.proj(torch.relu(block.ffn.fc(h))) + h
    seq = torch.ones(2, T, dtype=torch.long)  # no padding
    assert torch.allclose(block(x, attention_mask(seq)), ref, atol=1e-5)
    assert block.ffn.fc.out_features == H  # as wide as the input (pre-norm: 4H)
    assert Block(SASRecConfig(max_len=8, hidden=H, n_heads=2)).ffn.fc.out_features == 4 * H


def test_attended_padding_is_a_sink_that_does_not_depend_on_the_batch():
    """With ``attend_padding`` a short sequence's outputs change (it may attend to nothing), but not with how far
    its batch was padded: the model pads to max_len itself."""
    sink, plain = make("sasrec_original_sink"), make("sasrec_original")
    plain.load_state_dict(sink.state_dict())
    short = torch.tensor([[3, 5, 7, 9]])
    assert not torch.allclose(sink(short)[:, -1], plain(short)[:, -1], atol=1e-4)
    full = torch.tensor([[0, 0, 0, 0, 3, 5, 7, 9]])
    assert torch.allclose(sink(short), sink(full)[:, -4:], atol=1e-6)


def test_attention_mask_is_causal_hides_padding_keeps_diagonal():
    mask = attention_mask(torch.tensor([[0, 4, 5]]))[0, 0]
    assert mask.tolist() == [[True, False, False], [False, True, False], [False, True, True]]


def test_sigmoid_attention_weights_are_in_0_1_and_do_not_sum_to_one():
    torch.manual_seed(0)
    att = SigmoidAttention(H)
    q, c = torch.randn(2, 3, H), torch.randn(2, 5, H)
    out, w = att(q, c)
    assert out.shape == (2, 3, H) and w.shape == (2, 3, 5)
    assert ((w > 0) & (w < 1)).all()
    assert not torch.allclose(w.sum(-1), torch.ones(2, 3), atol=1e-2)
    mask = torch.zeros(2, 3, 5, dtype=torch.bool)
    mask[..., :2] = True
    _, wm = att(q, c, mask)
    assert (wm[..., 2:] == 0).all()


def test_grasp_weights_recorded_causal_and_not_normalised():
    m = make("grasp")
    m(SEQ, USERS)
    enh: HolisticAttention = m.enhancer
    fine, glob = enh.last_weights["fine"], enh.last_weights["global"]
    assert fine.shape == (3, T, T) and glob.shape == (3, T, 4)
    assert (fine.triu(1) == 0).all()                       # no attention to later items
    assert (fine[0, :, :2] == 0).all()                      # nor to padding
    assert ((glob > 0) & (glob < 1)).all()
    assert not torch.allclose(glob.sum(-1), torch.ones(3, T), atol=1e-2)


def test_grasp_uses_the_text_features():
    m = make("grasp")
    a = m(SEQ, USERS)
    m.enhancer.user_nb[USERS[0]] += 3.0                     # similar users' text of user 0
    m.enhancer.item_nb[9] += 3.0                            # similar items' text of item 9 (only in row 0)
    b = m(SEQ, USERS)
    assert not torch.allclose(a[0], b[0], atol=1e-4) and torch.allclose(a[1:], b[1:], atol=1e-6)
    m.enhancer.user_sem[USERS[1]] += 3.0                    # the user's own text: not an input by default
    assert torch.allclose(b, m(SEQ, USERS), atol=1e-6)
    m.enhancer.cfg = dataclasses.replace(GRASP, own_user_text=True)
    assert not torch.allclose(b[1], m(SEQ, USERS)[1], atol=1e-4)


def test_similar_users_can_be_switched_off():
    m = make("grasp", grasp=dataclasses.replace(GRASP, user_neighbours=False))
    a = m(SEQ, USERS)
    assert m.enhancer.last_weights["global"].shape == (3, T, 3)   # [profile, item, item's neighbours]
    m.enhancer.user_nb += 3.0
    assert torch.allclose(a, m(SEQ, USERS), atol=1e-6)


def test_feature_tables_are_frozen_buffers():
    m = make("grasp")
    names = {n for n, _ in m.named_parameters()}
    assert not any("item_sem" in n or "user_nb" in n for n in names)
    assert "enhancer.item_sem" not in m.state_dict()


def test_grasp_runs_with_bf16_weights_and_fp32_text_tables():
    """DeepSpeed's bf16 (ZeRO-2 on GPUs) casts the parameters, not the frozen buffers (seen on an H100)."""
    m = make("grasp")
    want = m(SEQ, USERS)
    for p in m.parameters():
        p.data = p.data.bfloat16()
    assert m.enhancer.item_sem.dtype == torch.float32
    h = m(SEQ, USERS)
    assert h.dtype == torch.bfloat16 and m.item_table().dtype == torch.bfloat16
    assert torch.allclose(h.float(), want, atol=0.1)


def test_text_init_starts_item_embeddings_from_the_text():
    torch.manual_seed(0)
    cfg = SASRecConfig(max_len=8, hidden=H, n_heads=2)
    t = tables()
    t["item_sem"][1:11] += 5.0 * torch.randn(D)                   # items 1..10 share a topic, the rest do not
    m = SASRec(cfg, N_ITEMS, build(N_ITEMS, H, cfg.dropout, t, GRASPConfig(text_init=0.05)))
    e = m.item_emb.weight.detach()[1:]
    assert e.std().item() == pytest.approx(0.05, rel=1e-3)
    sim = torch.nn.functional.normalize(e, dim=1) @ torch.nn.functional.normalize(e, dim=1).T
    assert sim[:10, :10].mean() > 0.5 > sim[:10, 10:].mean()      # the text's structure is in the embeddings
    off = SASRec(cfg, N_ITEMS, build(N_ITEMS, H, cfg.dropout, t, GRASPConfig()))
    assert off.item_emb.weight.std().item() == pytest.approx(0.02, rel=0.2)  # default: the generic random init


@pytest.mark.parametrize("ids", [True, False])
def test_item_adapter_reads_the_id_embedding_only_when_asked(ids):
    torch.manual_seed(0)
    enh = build(N_ITEMS, H, 0.2, tables(), GRASPConfig(item_adapter_ids=ids))
    torch.nn.init.normal_(enh.item_adapter.net[-1].weight, std=0.2)   # as after training (post_init zeroes it)
    a, b = torch.randn(N_ITEMS + 1, H), torch.randn(N_ITEMS + 1, H)
    extra_a, extra_b = enh.enrich_items(a) - a, enh.enrich_items(b) - b  # (N + 1, H): what the text adds
    assert torch.equal(extra_a[0], torch.zeros(H))                      # padding row untouched either way
    assert torch.allclose(extra_a, extra_b, atol=1e-6) is (not ids)      # text-only: the same whatever the ids


def test_mean_neighbours():
    v = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]])
    nb = torch.tensor([[1, 2], [0, -1], [-1, -1]])
    assert torch.allclose(mean_neighbours(v, nb), torch.tensor([[1.0, 1.5], [1.0, 0.0], [0.0, 0.0]]))


def test_ce_loss_only_where_there_is_a_target():
    torch.manual_seed(0)
    h, items = torch.randn(2, 3, H), torch.randn(N_ITEMS + 1, H)
    tgt = torch.tensor([[0, 4, 5], [0, 0, 6]])
    logits = h @ items.T
    logits[..., 0] = float("-inf")
    manual = torch.stack([torch.nn.functional.cross_entropy(logits[b, t][None], tgt[b, t][None])
                          for b, t in [(0, 1), (0, 2), (1, 2)]]).mean()
    assert torch.allclose(ce_loss(h, tgt, items), manual, atol=1e-6)
    assert torch.allclose(ce_loss(h, tgt, items, normaliser=6.0), manual / 2, atol=1e-6)
    neg = torch.full_like(tgt, 7)
    pos_logit = torch.stack([h[b, t] @ items[tgt[b, t]] for b, t in [(0, 1), (0, 2), (1, 2)]])   # (3,)
    neg_logit = torch.stack([h[b, t] @ items[7] for b, t in [(0, 1), (0, 2), (1, 2)]])
    by_hand = sum(-math.log(1 / (1 + math.exp(-p))) - math.log(1 - 1 / (1 + math.exp(-n)))
                  for p, n in zip(pos_logit.tolist(), neg_logit.tolist(), strict=True)) / 3
    assert bce_loss(h, tgt, neg, items).item() == pytest.approx(by_hand, rel=1e-5)
    assert bce_loss(h, tgt, neg, items, normaliser=6.0).item() == pytest.approx(by_hand / 2, rel=1e-5)


def test_model_configs_reject_bad_values_naming_the_field():
    with pytest.raises(FieldError, match=r"'hidden' \(10\) must be divisible by 'n_heads' \(4\)") as err:
        SASRecConfig(hidden=10, n_heads=4)
    assert err.value.field == "hidden"
    with pytest.raises(FieldError, match=r"'dropout' must be in \[0, 1\)"):
        SASRecConfig(dropout=1.0)
    with pytest.raises(FieldError, match=r"'block' must be one of \['prenorm', 'original'\]"):
        SASRecConfig(block="postnorm")
    with pytest.raises(FieldError, match=r"'text_init'"):
        GRASPConfig(text_init=-0.1)


def test_input_contracts_are_asserted():
    m = make("sasrec")
    with pytest.raises(AssertionError, match="max_len"):
        m(torch.ones(1, 9, dtype=torch.long))
    with pytest.raises(AssertionError, match="users"):
        make("grasp")(SEQ)
