"""pipelines.serving: the pyfunc every model is served through, on a hand-written model (top-k, exclusions, unknown
users, the stored reason beside the top item), on tiny SASRec and GRASP models and WALS factors for a history sent
with the request (the model run on the stored history plus it), and bad requests refused naming the field."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipelines.serving import TopKModel, save_scorer

ITEMS = ["", "a", "b", "c", "d"]


def served(tmp_path, reasons=None) -> TopKModel:
    path = save_scorer(tmp_path / "m", "test", ["u0", "u1"], ITEMS, user_emb=np.array([[1.0], [-1.0]], np.float32),
                       item_emb=np.array([[0.0], [4], [3], [2], [1]], np.float32), item_bias=np.zeros(5, np.float32),
                       hist_indptr=np.array([0, 1, 1]), hist_indices=np.array([1], np.int32), top_k=3,
                       reasons=reasons, model_key="m-123")
    return TopKModel().load(path)


def test_top_k_excludes_history_and_serves_unknown_users_the_mean_user(tmp_path):
    m = served(tmp_path)
    out = m.predict(None, pd.DataFrame({"user_id": ["u0", "u1", "nobody"]}), {"k": 2})
    assert out["item_ids"].tolist() == [["b", "c"], ["d", "c"], ["a", "b"]]   # u0 has bought a; mean user is 0
    assert out["known"].tolist() == [True, True, False] and "reason" not in out


def test_the_reason_is_returned_only_for_the_item_it_was_written_for(tmp_path):
    m = served(tmp_path, {"u0": ["b", "Because you liked a."], "u1": ["a", "Written for a."]})
    out = m.predict(None, pd.DataFrame({"user_id": ["u0", "u1", "nobody"]}), {"k": 2, "reasons": True})
    assert out["reason"].tolist() == ["Because you liked a.", None, None]      # u1's top item is d, not a
    assert out["item_ids"][0] == ["b", "c"]


# ----------------------------------------------------------------------------- request-time history

CATALOGUE = ["", "i1", "i2", "i3", "i4", "i5", "i6", "i7", "i8"]   # item_idx 1..8
USERS = ["u0", "u1", "u2"]
STORED = [[1, 2, 3], [3, 2], [2, 2, 6, 3]]   # each user's items as of the nightly run, oldest first


def tiny_sequential(grasp: bool, user_neighbours: bool = False, text: bool = False):
    """A small SASRec (max_len 4), or GRASP, its weights all random (GRASP's adapters start at zero otherwise);
    ``text``: its items are text vectors plus a bounded delta (``models.items``)."""
    import torch

    from models.configs import GRASPConfig, ItemsConfig, SASRecConfig
    from models.grasp import build
    from models.sasrec import SASRec

    torch.manual_seed(0)
    items = ItemsConfig(source=text, delta_max=0.5) if text else ItemsConfig()
    cfg = SASRecConfig(max_len=4, hidden=16, n_layers=2, n_heads=2, dropout=0.1, items=items)
    enhancer = None
    if grasp:
        g = torch.Generator().manual_seed(1)
        t = {n: torch.randn(r, 6, generator=g) for n, r in (("item_sem", 9), ("item_nb", 9), ("user_sem", 3),
                                                             ("user_nb", 3))}
        enhancer = build(8, cfg.hidden, cfg.dropout, t, GRASPConfig(user_neighbours=user_neighbours))
    item_text = torch.randn(9, 6 if text == "text" else cfg.hidden, generator=torch.Generator().manual_seed(2)) \
        if text else None
    model = SASRec(cfg, 8, enhancer, text=item_text)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    return model.eval()


def forward_scores(model, items: list[int], user: int | None) -> np.ndarray:
    """(N + 1,) scores of the model's own forward pass on one sequence (its last ``max_len`` items); ``user`` None:
    a user the model does not know (GRASP's user texts are zero)."""
    import copy

    import torch

    if user is None:
        model, user = copy.deepcopy(model), 0
        if model.enhancer is not None:
            model.enhancer.user_sem, model.enhancer.user_nb = (torch.zeros_like(model.enhancer.user_sem),
                                                               torch.zeros_like(model.enhancer.user_nb))
    with torch.no_grad():
        table = model.item_table()
        return (model(torch.tensor([items[-model.cfg.max_len:]]), torch.tensor([user]), table)[0, -1] @ table.T).numpy()


def served_sequential(tmp_path, model) -> TopKModel:
    """The model served as the pipeline serves it: its nightly vectors (``save_scorer``) and ``save_forward``."""
    import torch

    from pipelines.serving import save_forward

    with torch.no_grad():
        table = model.item_table().numpy()
        users = np.stack([model(torch.tensor([s[-4:]]), torch.tensor([u]))[0, -1].numpy() for u, s in enumerate(STORED)])
    path = save_scorer(tmp_path / "m", "sasrec", USERS, CATALOGUE, user_emb=users, item_emb=table,
                       item_bias=np.zeros(9, np.float32), hist_indptr=np.cumsum([0] + [len(s) for s in STORED]),
                       hist_indices=np.concatenate(STORED).astype(np.int32), top_k=3)
    return TopKModel().load(path, forward=save_forward(tmp_path / "forward", model))


def expected_top(scores: np.ndarray, exclude: list[int], k: int) -> list[str]:
    s = scores.astype(np.float64).copy()
    s[[0, *exclude]] = -np.inf
    return [CATALOGUE[i] for i in np.argsort(-s, kind="stable")[:k]]


def at(scores: np.ndarray, ids: list[str]) -> np.ndarray:
    return scores[[CATALOGUE.index(i) for i in ids]]


@pytest.mark.parametrize("grasp, user_neighbours, text", [(False, False, False), (True, False, False),
                                                           (True, True, False), (False, False, "text"),
                                                           (False, False, "pca")],
                         ids=["sasrec", "grasp", "grasp-user-neighbours", "sasrec-text-items", "sasrec-pca-items"])
def test_a_request_history_scores_as_the_model_would_on_the_stored_history_plus_it(tmp_path, grasp, user_neighbours,
                                                                                     text):
    """Appending the request's items to the stored history and re-running the model gives the served list and
    scores, several rows in one batch; past max_len the last max_len items are read; unknown ids are skipped and
    counted; a newcomer's list is their own."""
    model = tiny_sequential(grasp, user_neighbours, text)
    m = served_sequential(tmp_path, model)
    req = pd.DataFrame({"user_id": ["u0", "u1", "u2", "newcomer"],
                        "history": [["i4", "nope", "i7"], ["i1"], None, ["i8", "i3"]]})
    out = m.predict(None, req, {"k": 3})
    seqs = [[1, 2, 3, 4, 7], [3, 2, 1], STORED[2], [8, 3]]   # stored + the request's known items (u2: none sent)
    for row, (seq, user) in enumerate(zip(seqs, [0, 1, 2, None], strict=True)):
        want = forward_scores(model, seq, user)
        assert out["item_ids"][row] == expected_top(want, seq, 3), row
        assert np.allclose(out["scores"][row], at(want, out["item_ids"][row]), atol=1e-5), row
    assert out["unknown_items"].tolist() == [1, 0, 0, 0]
    assert out["known"].tolist() == [True, True, True, True]


def test_a_day_one_row_is_served_and_only_it_may_differ_from_the_weights(tmp_path):
    """A cold item's row given by a day-one path (``day_one_rows``) is the one a request's forward pass scores with
    (the model's own row for it was never trained); any other row that differs from the weights is refused."""
    import torch

    from pipelines.serving import save_forward

    model = tiny_sequential(False)
    with torch.no_grad():
        table = model.item_table().numpy()
    filled = table.copy()
    filled[8] = 3 * table[2]                                               # i8: the day-one row

    def load(rows):
        path = save_scorer(tmp_path / f"m{len(rows)}", "sasrec", USERS, CATALOGUE,
                           user_emb=np.ones((3, table.shape[1]), np.float32),
                           item_emb=filled, item_bias=np.zeros(9, np.float32),
                           hist_indptr=np.cumsum([0] + [len(s) for s in STORED]),
                           hist_indices=np.concatenate(STORED).astype(np.int32), top_k=3, day_one="fill_in",
                           day_one_rows=np.array(rows, np.int64))
        return TopKModel().load(path, forward=save_forward(tmp_path / f"f{len(rows)}", model))

    with pytest.raises(ValueError, match="two trainings were mixed"):
        load([])
    m = load([8])
    with torch.no_grad():
        h = model(torch.tensor([[1, 4]]), torch.tensor([0]), torch.from_numpy(filled))[0, -1].numpy()
    out = m.predict(None, pd.DataFrame({"user_id": ["newcomer"], "history": [["i1", "i4"]]}), {"k": 6})
    want = h @ filled.T
    assert out["item_ids"][0] == expected_top(want, [1, 4], 6) and "i8" in out["item_ids"][0]
    assert np.allclose(out["scores"][0], at(want, out["item_ids"][0]), atol=1e-5)


def test_without_new_items_the_nightly_vector_answers(tmp_path):
    m = served_sequential(tmp_path, tiny_sequential(False))
    plain = m.predict(None, pd.DataFrame({"user_id": ["u0", "u1"]}), {"k": 4})
    assert "unknown_items" not in plain
    same = m.predict(None, pd.DataFrame({"user_id": ["u0", "u1"], "history": [[], ["zz", "yy"]]}), {"k": 4})
    assert same["item_ids"].tolist() == plain["item_ids"].tolist()
    assert same["unknown_items"].tolist() == [0, 2] and same["known"].tolist() == [True, True]


def test_nothing_to_go_on_gets_the_popularity_list_unpersonalised(tmp_path):
    """An unknown user with an empty or all-unknown history: the items most often in the stored histories."""
    path = save_scorer(tmp_path / "m", "sasrec", USERS, CATALOGUE, user_emb=np.ones((3, 1), np.float32),
                       item_emb=np.arange(9, 0, -1, dtype=np.float32)[:, None], item_bias=np.zeros(9, np.float32),
                       hist_indptr=np.cumsum([0] + [len(s) for s in STORED]),
                       hist_indices=np.concatenate(STORED).astype(np.int32), top_k=3)
    m = TopKModel().load(path)   # the mean user would rank i1, i2 first
    out = m.predict(None, pd.DataFrame({"user_id": ["a", "b"], "history": [[], ["zz"]]}), {"k": 2})
    assert out["item_ids"].tolist() == [["i2", "i3"], ["i2", "i3"]]   # i2 four times, i3 three, the rest once
    assert out["known"].tolist() == [False, False] and out["unknown_items"].tolist() == [0, 1]


def test_wals_folds_the_history_in_with_the_item_factors_fixed(tmp_path):
    """The user factor is the solve of (Y'Y + reg I + alpha sum_j y_j y_j') x = sum_j (1 + alpha c_j) y_j over the
    stored items plus the request's (computed here independently of the pipeline's solver)."""
    rng = np.random.default_rng(3)
    items = rng.normal(size=(9, 3)).astype(np.float32)
    items[0] = 0.0
    path = save_scorer(tmp_path / "w", "wals", USERS, CATALOGUE, user_emb=rng.normal(size=(3, 3)).astype(np.float32),
                       item_emb=items, item_bias=np.zeros(9, np.float32),
                       hist_indptr=np.cumsum([0] + [len(s) for s in STORED]),
                       hist_indices=np.concatenate(STORED).astype(np.int32), top_k=3)
    reg, alpha = 0.1, 4.0
    m = TopKModel().load(path, foldin={"regularization": reg, "alpha": alpha})
    out = m.predict(None, pd.DataFrame({"user_id": ["u2", "new"], "history": [["i7", "i2"], ["i1"]]}), {"k": 3})
    y = items.astype(np.float64)
    for row, seq in enumerate([[2, 2, 6, 3, 7, 2], [1]]):
        a = y.T @ y + reg * np.eye(3) + alpha * sum(np.outer(y[j], y[j]) for j in seq)
        x = np.linalg.solve(a, sum(alpha * y[j] for j in seq) + sum(y[j] for j in set(seq)))
        assert out["item_ids"][row] == expected_top(y @ x, seq, 3)
        assert np.allclose(out["scores"][row], at(y @ x, out["item_ids"][row]), rtol=1e-4, atol=1e-4)
    plain = m.predict(None, pd.DataFrame({"user_id": ["u2"]}), {"k": 3})   # no history: the stored factor
    assert plain["item_ids"][0] == expected_top(m.user_emb[2] @ items.T, STORED[2], 3)


def test_the_forward_artifact_holds_the_weights_and_configs_only(tmp_path):
    from safetensors.torch import load_file

    from pipelines.serving import save_forward

    model = tiny_sequential(True)
    path = save_forward(tmp_path / "forward", model)
    assert sorted(p.name for p in path.iterdir()) == ["forward.json", "tables.safetensors", "weights.safetensors"]
    assert set(load_file(str(path / "weights.safetensors"))) == set(model.state_dict())
    assert set(load_file(str(path / "tables.safetensors"))) == {"item_sem", "item_nb", "user_sem", "user_nb"}


@pytest.mark.parametrize("request_, params, field", [
    ({"history": [["i1"]]}, {}, "user_id"),
    ({"user_id": ["u0", None]}, {}, "user_id"),
    ({"user_id": ["u0"], "history": ["i1"]}, {}, "history"),
    ({"user_id": ["u0"], "history": [[1, 2]]}, {}, "history"),
    ({"user_id": ["u0"], "exclude": ["i1"]}, {}, "exclude"),
    ({"user_id": ["u0"]}, {"k": 0}, "k"),
    ({"user_id": ["u0"]}, {"k": -3}, "k"),
    ({"user_id": ["u0"]}, {"k": 5}, "k"),               # the catalogue has 4 items
    ({"user_id": ["u0"]}, {"k": "5"}, "k"),
], ids=["no-user_id", "null-user_id", "history-string", "history-ints", "exclude-string", "k-0", "k-negative",
        "k-above-catalogue", "k-string"])
def test_a_bad_request_is_refused_naming_the_field(tmp_path, request_, params, field):
    from mlflow.exceptions import MlflowException

    m = served(tmp_path)
    with pytest.raises(MlflowException) as err:
        m.predict(None, pd.DataFrame(request_), params)
    assert err.value.get_http_status_code() == 400
    assert f"'{field}'" in err.value.message and "\n" not in err.value.message
    assert m.predict(None, pd.DataFrame({"user_id": ["u0"]}), {"k": 4})["item_ids"][0] == ["b", "c", "d"]   # a is u0's


def test_the_serving_threads_are_set_when_the_model_loads(tmp_path):
    """``mlflow.serve_threads`` (logged as the model's config) sets torch's threads for the request-time path; 0 leaves
    torch's default; a negative value is refused when the config loads."""
    import torch

    from pipelines.config import load_config
    from pipelines.serving import save_forward

    model = tiny_sequential(grasp=False)
    served_sequential(tmp_path, model)                                        # the nightly artifact at tmp_path / "m"
    path = tmp_path / "m"
    before = torch.get_num_threads()
    try:
        TopKModel().load(path, forward=save_forward(tmp_path / "f1", model), threads=1)
        assert torch.get_num_threads() == 1
        TopKModel().load(path, forward=save_forward(tmp_path / "f2", model), threads=0)
        assert torch.get_num_threads() == 1                                   # 0: left as it was
    finally:
        torch.set_num_threads(before)
    with pytest.raises(Exception, match="serve_threads"):
        load_config(None, ["mlflow.serve_threads=-1"])
