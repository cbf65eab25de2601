"""Text-aware item vectors (``models.items``): text map plus a bounded, droppable per-item delta; an item outside
training keeps its text's vector."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from models.configs import FieldError, ItemsConfig, SASRecConfig
from models.items import principal_components, standardise, text_neighbours
from models.sasrec import SASRec, ce_loss, never_candidates

N_ITEMS, D, H = 9, 12, 8
COLD = N_ITEMS  # the last item is held out: no sequence holds it, the softmax excludes it


def text_table(seed: int = 0) -> torch.Tensor:
    t = torch.randn(N_ITEMS + 1, D, generator=torch.Generator().manual_seed(seed))
    t[0] = 0
    return t


def model(delta_max: float = 0.0, id_dropout: float = 0.0) -> SASRec:
    torch.manual_seed(0)
    cfg = SASRecConfig(max_len=5, hidden=H, n_layers=1, n_heads=1, dropout=0.0,
                       items=ItemsConfig(source="text", delta_max=delta_max, id_dropout=id_dropout))
    return SASRec(cfg, N_ITEMS, text=text_table())


def train_steps(m: SASRec, steps: int = 30) -> None:
    seq = torch.tensor([[0, 1, 2, 3], [4, 5, 6, 7], [2, 4, 6, 8]])
    tgt = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8], [4, 6, 8, 1]])
    exclude = torch.zeros(N_ITEMS + 1, dtype=torch.bool)
    exclude[COLD] = True
    opt = torch.optim.AdamW(m.parameters(), lr=0.05, weight_decay=0.01)
    for _ in range(steps):
        items = m.item_table()
        loss = ce_loss(m(seq, None, items), tgt, items, exclude=exclude)
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_an_item_outside_training_keeps_its_texts_vector_and_trained_deltas_stay_bounded():
    m = model(delta_max=0.3)
    assert m.item_emb.weight.abs().sum() == 0                             # every delta starts at 0
    train_steps(m)
    m.eval()
    table = m.item_table().detach()
    text = m.item_text.proj(m.item_text.text).detach()
    assert torch.equal(m.item_emb.weight[COLD].detach(), torch.zeros(H))  # never trained: delta 0
    assert torch.allclose(table[COLD], text[COLD])                        # its vector is its text's
    assert table[0].abs().sum() == 0                                      # padding
    deltas = (table - text)[1:COLD].norm(dim=1)
    assert deltas.max() <= 0.3 + 1e-5 and deltas.max() > 0.1              # trained, and within the bound


def test_id_dropout_acts_in_training_only():
    m = model(id_dropout=0.5)
    with torch.no_grad():
        m.item_emb.weight[1:] = 1.0
    text = m.item_text.proj(m.item_text.text).detach()
    dropped = ((m.item_table().detach() - text)[1:].abs().sum(1) == 0).float().mean()
    assert 0.0 < dropped < 1.0                                            # some items lost their delta this step
    m.eval()
    assert torch.allclose(m.item_table().detach()[1:] - text[1:], torch.ones(N_ITEMS, H))


def test_standardise_uses_the_fit_rows_only_and_keeps_missing_text_zero():
    t = text_table()
    t[3] = 0                                                              # an item without text
    rows = torch.ones(N_ITEMS + 1, dtype=torch.bool)
    rows[[0, 3, COLD]] = False
    z = standardise(t, rows)
    assert torch.allclose(z[rows].mean(0), torch.zeros(D), atol=1e-5)
    assert z[3].abs().sum() == 0 and z[0].abs().sum() == 0
    moved = t.clone()
    moved[COLD] += 100.0                                                  # a held-out item's text shapes nothing
    assert torch.allclose(standardise(moved, rows)[1:COLD], z[1:COLD])


def test_items_config_names_the_field_and_the_text_table_is_required_exactly_for_text():
    with pytest.raises(FieldError, match="'source' must be one of"):
        ItemsConfig(source="semantic")
    with pytest.raises(FieldError, match="'delta_max' must be 0"):
        ItemsConfig(source="text", delta_max=-1.0)
    with pytest.raises(ValueError, match="needs the item text table for 'text'"):
        SASRec(SASRecConfig(hidden=H, n_heads=1, items=ItemsConfig(source="text")), N_ITEMS)
    with pytest.raises(ValueError, match="takes none for 'id'"):
        SASRec(SASRecConfig(hidden=H, n_heads=1), N_ITEMS, text=text_table())


# ----------------------------------------------------------------------------- pca: a text-initialised id table

def test_principal_components_are_whitened_on_the_fit_rows_and_ignore_held_out_text():
    n = 200
    t = torch.randn(n + 1, 16, generator=torch.Generator().manual_seed(1)) * torch.linspace(0.1, 3.0, 16)
    t[0], t[5] = 0, 0                                                     # padding, an item without text
    rows = t.abs().sum(1) > 0
    rows[n] = False                                                       # held out
    z = principal_components(t, rows, 8)
    assert z.shape == (n + 1, 8) and z[0].abs().sum() == 0 and z[5].abs().sum() == 0
    assert torch.allclose(z[rows].mean(0), torch.zeros(8), atol=1e-4)
    assert torch.allclose(z[rows].std(0), torch.ones(8), atol=1e-4)       # whitened: every component std 1
    moved = t.clone()
    moved[n] += 50.0
    assert torch.allclose(principal_components(moved, rows, 8)[rows], z[rows], atol=1e-5)
    assert principal_components(t[:6], rows[:6], 8)[:, 4:].abs().sum() == 0   # beyond the rank: zero columns


def test_the_pca_init_has_the_random_inits_scale_and_trains_like_an_id_table():
    n, std = 200, 0.0128
    t = torch.randn(n + 1, 16, generator=torch.Generator().manual_seed(2)) * torch.linspace(0.1, 3.0, 16)
    t[0] = 0
    rows = t.abs().sum(1) > 0
    cfg = SASRecConfig(max_len=5, hidden=8, n_layers=1, n_heads=1, item_init_std=std, items=ItemsConfig(source="pca"))
    torch.manual_seed(0)
    m = SASRec(cfg, n, text=principal_components(t, rows, 8))
    w = m.item_emb.weight.detach()
    assert torch.allclose(w[1:].std(0), torch.full((8,), std), rtol=1e-3)   # the random init's scale, per dimension
    torch.manual_seed(0)
    random_init = SASRec(dataclasses.replace(cfg, items=ItemsConfig()), n).item_emb.weight.detach()
    assert abs(random_init[1:].std().item() - std) < 0.1 * std             # which is this
    assert m.item_text is None and m.item_emb.weight.requires_grad          # the table itself trains, tied
    assert torch.equal(m.item_table(), m.item_emb.weight)
    SASRec(cfg, n)                                                          # restored from weights: no text needed


# ----------------------------------------------------------------------------- semantic soft targets

def test_text_neighbours_are_the_nearest_trained_items_weighted_by_a_temperature_softmax():
    t = torch.tensor([[0, 0], [1, 0], [0.9, 0.1], [0, 1], [0.8, 0.2], [0, 0], [1, 0.05]], dtype=torch.float32)
    rows = t.abs().sum(1) > 0
    rows[6] = False                                                       # held out: never anyone's neighbour
    ids, w = text_neighbours(t, rows, k=2, temperature=0.5)
    assert ids[1].tolist() == [2, 4] and 1 not in ids[1].tolist() and 6 not in ids.flatten().tolist()
    cos = torch.nn.functional.cosine_similarity(t[1:2], t[[2, 4]])
    assert torch.allclose(w[1], torch.softmax(cos / 0.5, 0), atol=1e-6)
    has = w.sum(1) > 0
    assert torch.allclose(w[has].sum(1), torch.ones(int(has.sum())))     # a distribution where there is text
    assert ids[0].tolist() == [-1, -1] and ids[5].tolist() == [-1, -1] and w[[0, 5]].abs().sum() == 0


def test_the_soft_target_sums_to_one_and_is_the_one_hot_at_weight_zero():
    torch.manual_seed(0)
    hidden, items = torch.randn(2, 3, 4), torch.randn(7, 4)
    targets = torch.tensor([[1, 2, 0], [3, 5, 4]])
    ids = torch.tensor([[-1, -1]] + [[(i % 6) + 1, ((i + 1) % 6) + 1] for i in range(1, 7)])
    w = torch.tensor([[0.0, 0.0]] + [[0.7, 0.3]] * 6)
    w[5] = 0                                                              # item 5: no neighbours, its one-hot
    assert torch.allclose(ce_loss(hidden, targets, items, soft=(ids, w), soft_weight=0.0), ce_loss(hidden, targets, items))
    keep = targets != 0
    logp = torch.log_softmax(never_candidates(hidden[keep] @ items.T), 1)
    q = torch.zeros_like(logp)                                            # the target distribution, written out
    for m, y in enumerate(targets[keep].tolist()):
        share = 0.4 if w[y].sum() > 0 else 0.0
        q[m, y] += 1 - share
        for j, wj in zip(ids[y].tolist(), w[y].tolist(), strict=True):
            if wj > 0:
                q[m, j] += share * wj
    assert torch.allclose(q.sum(1), torch.ones(len(q)))
    want = -(q * torch.where(q > 0, logp, torch.zeros_like(logp))).sum() / keep.sum()
    assert torch.allclose(ce_loss(hidden, targets, items, soft=(ids, w), soft_weight=0.4), want, atol=1e-6)
