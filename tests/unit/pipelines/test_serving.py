"""pipelines.serving: the pyfunc every model is served through, on a hand-written model (top-k, exclusions, unknown
users, the stored reason beside the top item)."""
from __future__ import annotations

import numpy as np
import pandas as pd

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
