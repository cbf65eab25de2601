"""Text-aware item vectors (``models.items``): text map plus a bounded, droppable per-item delta; an item outside
training keeps its text's vector."""
from __future__ import annotations

import pytest
import torch

from models.configs import FieldError, ItemsConfig, SASRecConfig
from models.items import standardise
from models.sasrec import SASRec, ce_loss

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
    with pytest.raises(ValueError, match="needs the item text table exactly when it is 'text'"):
        SASRec(SASRecConfig(hidden=H, n_heads=1, items=ItemsConfig(source="text")), N_ITEMS)
