"""WebRec's MP-Head on a tiny random Llama (no download): the zero gate leaves the model unchanged, causal masking
holds, top-k pruning keeps only the best document tokens, and message passing matches a hand computation."""
from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn as nn

from models.configs import FieldError, LLMRecConfig, MPHeadConfig
from models.llmrec import DOC, ITEM, TEXT, USER, LLMRec
from models.mp_head import MPHeadAttention, attach_mp_head, message_passing
from tests.unit.models.test_llmrec import SMALL, F, model, tiny_llama


def doc_batch(pad: int = 0) -> dict[str, torch.Tensor]:
    """Two rows: [t D D D t t U t I t I t] and [t D D t t t U t I t t t], left-padded by ``pad`` columns."""
    kinds = torch.tensor([[TEXT, DOC, DOC, DOC, TEXT, TEXT, USER, TEXT, ITEM, TEXT, ITEM, TEXT],
                          [TEXT, DOC, DOC, TEXT, TEXT, TEXT, USER, TEXT, ITEM, TEXT, TEXT, TEXT]], dtype=torch.int8)
    ids = (torch.arange(24).view(2, 12) * 7) % 47 + 3
    hist = torch.tensor([[0, 4, 9], [0, 0, 7]])
    mask = torch.ones(2, 12, dtype=torch.long)
    if pad:
        z = torch.zeros(2, pad, dtype=torch.long)
        ids, kinds, mask = torch.cat([z, ids], 1), torch.cat([z.to(torch.int8), kinds], 1), torch.cat([z, mask], 1)
    return {"input_ids": ids, "attention_mask": mask, "kinds": kinds, "hist": hist,
            "user_factor": torch.randn(2, F, generator=torch.Generator().manual_seed(3))}


# user_skip off: the head reads the hidden state from the start (with the skip its query weights start at zero)
MP = dataclasses.replace(SMALL, user_skip=False, retrieval="mp_head", mp_head=MPHeadConfig(layer=2, top_k=2, hops=2))


def test_zero_gate_gives_exactly_the_base_models_output():
    base = model(dataclasses.replace(MP, retrieval="prompt"))
    mp = model(MP)
    assert isinstance(mp.backbone.layers[1].self_attn, MPHeadAttention)
    mp.load_state_dict(base.state_dict(), strict=False)                         # same projectors and head
    for pad in (0, 3):
        b = doc_batch(pad)
        assert torch.equal(base(**b), mp(**b))
    mp.mp_head.gate.data.fill_(0.5)                                             # a trained gate changes them
    assert not torch.allclose(base(**doc_batch()), mp(**doc_batch()))


def test_only_mp_head_parameters_and_the_gate_are_new_and_trainable():
    mp = model(MP)
    new = {n for n, p in mp.backbone.named_parameters() if p.requires_grad}
    assert new and all(".self_attn." in n and ".base." not in n for n in new)
    assert {n.rsplit(".", 1)[-1] for n in new} >= {"gate", "task"}


def hidden(rec: LLMRec, b: dict) -> torch.Tensor:
    """The decoder's last hidden states (B, T, D) for batch ``b`` (the MP-Head fed the batch's documents)."""
    from models.llmrec import position_ids
    emb = rec.backbone.get_input_embeddings()(b["input_ids"])
    with rec.mp_head.documents(b["kinds"] == DOC):
        return rec.backbone(inputs_embeds=emb, attention_mask=b["attention_mask"],
                              position_ids=position_ids(b["attention_mask"])).last_hidden_state


@pytest.mark.parametrize("changed", [2, 5, 9])   # a document token, the first token after them, a history token
def test_causal_masking_holds_with_a_trained_head(changed):
    torch.manual_seed(0)
    rec = model(MP)
    for p in rec.mp_head.parameters():
        nn.init.normal_(p, std=0.5)
    b = doc_batch()
    h0 = hidden(rec, b)
    b2 = {**b, "input_ids": b["input_ids"].clone()}
    b2["input_ids"][:, changed] = (b2["input_ids"][:, changed] + 11) % 47 + 3
    h1 = hidden(rec, b2)
    assert torch.equal(h0[:, :changed], h1[:, :changed])                       # nothing before it moves
    assert not torch.allclose(h0[:, changed:], h1[:, changed:])                # (and the change is visible)


def test_top_k_keeps_the_k_document_tokens_most_related_to_the_task():
    torch.manual_seed(0)
    rec = model(dataclasses.replace(MP, mp_head=MPHeadConfig(layer=1, top_k=2, hops=1)))
    head = rec.mp_head
    captured = {}
    head.entity.register_forward_hook(lambda m, i, o: captured.__setitem__("e", o.detach()))
    b = doc_batch()
    rec(**b)
    c = torch.nn.functional.cosine_similarity(captured["e"], head.relation(head.task).expand_as(captured["e"]), -1)
    doc = b["kinds"] == DOC
    for row in range(2):
        pos = torch.nonzero(doc[row]).flatten()
        best = pos[c[row, pos].argsort(descending=True)[:2]]
        assert sorted(head.last_selected[row].tolist()) == sorted(best.tolist())
    big = model(dataclasses.replace(MP, mp_head=MPHeadConfig(layer=1, top_k=8, hops=1)))
    big(**b)
    sel = big.mp_head.last_selected
    assert (sel[0] >= 0).sum() == 3 and (sel[1] >= 0).sum() == 2              # never more than the row's documents
    assert all(bool(doc[r, p]) for r in range(2) for p in sel[r].tolist() if p >= 0)


def test_message_passing_matches_a_hand_computed_four_node_graph():
    e = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, 0.0]]])       # (1, 4, 2)
    c = torch.tensor([[1.0, 0.5, -0.5, 0.0]])
    lin = nn.Linear(2, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
        lin.bias.copy_(torch.tensor([0.1, -0.1]))
    out = message_passing(e, c, torch.ones(1, 4), nn.ModuleList([lin]))
    # r = max(0, c_i c_j): node 0-1: 0.5, 0-0: 1, 1-1: 0.25, 2-2: 0.25, node 3 isolated (c = 0)
    # deg = [1.5, 0.75, 0.25, 0]; W e = [[1,0],[0,2],[1,2],[2,0]]
    n00, n01, n11, n22 = 1 / 1.5, 0.5 / (1.5 * 0.75) ** 0.5, 0.25 / 0.75, 0.25 / 0.25
    want = torch.tensor([[n00 * 1 + n01 * 0, n00 * 0 + n01 * 2],
                         [n01 * 1 + n11 * 0, n01 * 0 + n11 * 2],
                         [n22 * 1, n22 * 2],
                         [0.0, 0.0]]) + torch.tensor([0.1, -0.1])
    assert torch.allclose(out[0], want, atol=1e-6)
    pruned = message_passing(e, c, torch.tensor([[1.0, 0.0, 1.0, 1.0]]), nn.ModuleList([lin]))
    assert torch.allclose(pruned[0, 0], torch.tensor([1.1, -0.1]))             # node 1 pruned: node 0 alone


def test_mp_head_config_and_layer_errors():
    with pytest.raises(FieldError, match="layer"):
        MPHeadConfig(layer=0)
    with pytest.raises(FieldError, match="retrieval"):
        LLMRecConfig(retrieval="web")
    with pytest.raises(ValueError, match="keeps 2 decoder layers"):
        attach_mp_head(tiny_llama().model, MPHeadConfig(layer=3))
