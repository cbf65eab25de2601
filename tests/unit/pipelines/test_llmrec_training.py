"""pipelines.training.llmrec: prompts, the leak-free fold-in (checked against implicit's own solve), examples, and
the two training stages through the real loop on a tiny random Llama (frozen backbone, then LoRA only)."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from transformers import AutoTokenizer

from features import text as T
from models.configs import LLMRecConfig
from models.llmrec import ITEM, USER, LLMRec, add_lora
from pipelines.backends.weights import default_encoder_dir
from pipelines.config import DistributedConfig, TrainConfig
from pipelines.evaluation.protocol import Csr, EvalData
from pipelines.training.llmrec import FoldIn, LLMRecTask, Prompts, phase_examples, train_examples
from pipelines.training.loop import fit
from tests.unit.models.test_llmrec import tiny_llama

CFG = LLMRecConfig(max_history=3, title_tokens=4, projector_hidden=16, head_dim=8, lora_dropout=0.0)
TITLES = ["", "red lipstick", "blue mascara deluxe edition", "rose water toner", "argan oil shampoo",
          "vitamin c serum", "nail polish"]


@pytest.fixture(scope="module")
def tok():
    return AutoTokenizer.from_pretrained(default_encoder_dir())


def _csr(rows: list[list[int]]) -> Csr:
    return Csr(np.concatenate([[0], np.cumsum([len(r) for r in rows])]).astype(np.int64),
               np.array([i for r in rows for i in r], np.int32))


def test_prompt_layout(tok):
    p = Prompts(tok, TITLES, CFG)
    b = p.build([np.array([1, 2, 3, 4]), np.array([5])])
    assert b["hist"].tolist() == [[2, 3, 4], [0, 0, 5]]                    # the last max_history, left-padded
    kinds, ids, mask = b["kinds"], b["input_ids"], b["attention_mask"]
    assert ((kinds == USER).sum(1) == 1).all() and (kinds == ITEM).sum(1).tolist() == [3, 1]
    assert mask[0].all() and not mask[1].all() and mask[1, -1] == 1           # row 1 is left-padded
    text = tok.decode(ids[0][kinds[0] == 0])
    assert text == ("a shopper will next buy what suits these purchases, oldest first : blue mascara deluxe edition ; "
                    "rose water toner ; argan oil sham")                   # item 1 not shown; 4 title tokens each
    last = np.flatnonzero(kinds[0] == ITEM)[-1]                            # the prompt ends with the newest item:
    assert ids.shape[1] - 1 - last == len(p.titles[4]) == 4                # its soft token, then its title
    titles_only = Prompts(tok, TITLES, LLMRecConfig(soft_tokens=False, max_history=3))
    assert not titles_only.build([np.array([1, 2])])["kinds"].any()
    from features.text import Domain

    music = Prompts(tok, TITLES, CFG, Domain(user="listener", history="plays", choose="play"))  # the config's words
    b = music.build([np.array([5])])
    assert tok.decode(b["input_ids"][0][b["kinds"][0] == 0]).startswith(
        "a listener will next play what suits these plays, oldest first :")


def test_fold_in_is_implicits_least_squares_solve():
    from implicit.cpu.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    rows, cols = rng.integers(0, 50, 400), rng.integers(1, 31, 400)
    counts = sp.csr_matrix((np.ones(400, np.float32), (rows, cols)), shape=(50, 31))
    counts.sum_duplicates()
    alpha, reg = 10.0, 0.05
    conf = counts.copy()
    conf.data = 1 + alpha * conf.data
    with threadpool_limits(1, "blas"):
        als = AlternatingLeastSquares(factors=8, regularization=reg, alpha=1.0, iterations=5, random_state=0,
                                      calculate_training_loss=False)
        als.fit(conf, show_progress=False)
    fold = FoldIn(np.asarray(als.item_factors), reg, alpha)
    for u in (3, 17):
        history = np.repeat(counts[u].indices, counts[u].data.astype(int))   # repeats count, as in the counts
        ref = np.asarray(als.recalculate_user(u, conf[u])).ravel()
        assert np.allclose(fold([rng.permutation(history)])[0], ref, atol=1e-5)
    assert np.array_equal(fold([np.array([], np.int64)])[0], np.zeros(8, np.float32))


def test_the_target_never_reaches_what_the_model_sees(tok):
    """The example predicting item 4 sees the same prompt and user vector whether or not 4 (and later items) are in
    the user's sequence; folding the target in would change the user vector."""
    fold = FoldIn(np.random.default_rng(1).normal(size=(9, 4)).astype(np.float32), 0.05, 10.0)
    p = Prompts(tok, [""] + [f"item {i}" for i in range(1, 9)], CFG)
    short = train_examples(_csr([[1, 2, 3, 4]]), np.array([0]), per_user=1)
    longer = train_examples(_csr([[1, 2, 3, 4, 5, 6]]), np.array([0]), per_user=3)
    assert short.targets.tolist() == [4] and longer.targets.tolist() == [4, 5, 6]
    a, b = p.build(short.prefixes[:1]), p.build(longer.prefixes[:1])
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert np.array_equal(fold(short.prefixes[:1]), fold(longer.prefixes[:1]))
    assert not np.allclose(fold([np.array([1, 2, 3])]), fold([np.array([1, 2, 3, 4])]))
    data = EvalData(1, 8, _csr([[1, 2, 3]]), np.array([4], np.int32), np.array([5], np.int32))
    assert phase_examples(data, np.array([0]), "valid").prefixes[0].tolist() == [1, 2, 3]
    assert phase_examples(data, np.array([0]), "test").prefixes[0].tolist() == [1, 2, 3, 4]


def test_stage_1_leaves_the_backbone_bit_identical_and_stage_2_trains_lora_only(tok, tmp_path):
    rng = np.random.default_rng(0)
    n_users, n_items = 40, 6
    seqs = [list(rng.integers(1, n_items + 1, rng.integers(3, 7))) for _ in range(n_users)]
    data = EvalData(n_users, n_items, _csr(seqs), rng.integers(1, n_items + 1, n_users).astype(np.int32),
                    rng.integers(1, n_items + 1, n_users).astype(np.int32))
    factors = rng.normal(size=(n_items + 1, 4)).astype(np.float32)
    factors[0] = 0
    causal = tiny_llama(vocab_size=tok.vocab_size)
    causal.requires_grad_(False)
    m = LLMRec(CFG, causal.model, torch.from_numpy(factors), torch.randn(n_items + 1, 5))
    task = LLMRecTask(Prompts(tok, TITLES, CFG), FoldIn(factors, 0.05, 10.0),
                      train_examples(data.train, np.arange(n_users), 2), phase_examples(data, np.arange(20), "valid"),
                      data, batch_size=16, align_weight=0.5)
    base = {k: v.clone() for k, v in m.backbone.state_dict().items()}
    proj = m.user_proj.net[0].weight.clone()
    train = TrainConfig(batch_size=16, lr=0.01, epochs=2, patience=5)
    fit(m, task, train, DistributedConfig(), seed=1, ckpt=tmp_path / "s1", name="stage 1", section="llmrec")
    assert all(torch.equal(v, base[k]) for k, v in m.backbone.state_dict().items())
    assert not torch.equal(m.user_proj.net[0].weight, proj)
    add_lora(m.backbone, CFG)
    fit(m, task, train, DistributedConfig(), seed=1, ckpt=tmp_path / "s2", name="stage 2", section="llmrec")
    after = m.backbone.state_dict()

    def wrapped(k: str) -> str:  # LoRA wraps a target Linear: its weight moves to base_layer
        return next((w for t in CFG.lora_targets for w in [k.replace(f".{t}.", f".{t}.base_layer.")] if w in after), k)

    assert all(torch.equal(after[wrapped(k)], v) for k, v in base.items())     # base weights still untouched
    assert any(("lora_B" in k) and v.abs().sum() > 0 for k, v in after.items())
    saved = torch.load(tmp_path / "s2" / "best.pt")
    assert saved and all("lora_" in k or not k.startswith("backbone.") for k in saved)  # trainable weights only


def test_a_reason_prompt_holds_the_facts_and_nothing_else():
    history = [{"title": "Rose water toner", "description": "secret formula", "price": 9.0},
               {"title": "Argan oil shampoo", "brand": "OtherBrand"}]
    item = {"title": "Vitamin C serum", "brand": "Acme", "categories": ["Beauty", "Skin Care"], "price": 12.5,
            "description": "made with 20 rare ingredients"}
    msgs = T.reason_messages(history, item)
    user = msgs[-1]["content"]
    assert "Argan oil shampoo" in user and "Rose water toner" in user            # recent titles, newest first
    assert user.index("Argan") < user.index("Rose")
    assert all(x in user for x in ("Vitamin C serum", "Acme", "Beauty > Skin Care", "$12.50"))
    assert not any(x in user for x in ("secret formula", "rare ingredients", "OtherBrand", "$9.00"))
    assert "Use only the facts given" in msgs[0]["content"]
    facts = T.reason_facts(history, item)
    assert T.grounded_share("Acme vitamin serum after your argan shampoo.", facts) == 1.0
    assert T.unsupported_terms("An Olay cream like your toner.", facts, {"olay", "toner", "acme"}) == ["olay"]


def test_the_recommenders_item_factors_never_saw_a_training_target():
    from pipelines.config import WalsConfig
    from pipelines.training.llmrec import held_out_factors

    rng = np.random.default_rng(0)
    seqs = [list(rng.integers(1, 6, 6)) + [7] for _ in range(30)]               # item 7: only ever a last item
    seqs += [[1, 6]]                                 # not a training user: all its items count, item 6 included
    f = held_out_factors(_csr(seqs), 7, np.arange(30), holdout=1, wals=WalsConfig(factors=4, iterations=3, threads=1))
    assert f.shape == (8, 4) and np.array_equal(f[0], np.zeros(4)) and np.array_equal(f[7], np.zeros(4))
    assert np.abs(f[6]).sum() > 0 and np.abs(f[1:6]).sum() > 0
    assert train_examples(_csr(seqs), np.arange(30), per_user=1).targets.tolist() == [7] * 30
    f2 = held_out_factors(_csr(seqs), 7, np.arange(31), holdout=1, wals=WalsConfig(factors=4, iterations=3, threads=1))
    assert np.array_equal(f2[6], np.zeros(4))         # now a training user: its last item, 6, is held out too
