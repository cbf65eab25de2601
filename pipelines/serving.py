"""MLflow models-from-code: the pyfunc every recpipe model is served through.

Input: a DataFrame with ``user_id`` and optionally ``exclude`` (a list of item ids per row; default: the
user's own history as of fitting). Output: ``user_id, item_ids (list[str]), scores (list[float]), known``.
``params={"k": 10}`` sets the list length (default: the ``top_k`` the model was registered with);
``params={"reasons": True}`` adds ``reason``: the stored reason for the user's top item when one was generated for
exactly that item (the LLM recommender writes them), else None.

The artifact ``model`` is a directory written by ``save_scorer``: ``model.npz`` (``user_emb (U, F)``,
``item_emb (N + 1, F)`` and ``item_bias (N + 1,)``: score = user_emb @ item_emb.T + item_bias; a popularity model has
F = 0), ``history_indptr/indices`` (CSR of each user's items), ``meta.json`` (ids, kind, top_k) and optionally
``reasons.json`` (``{user_id: [item_id, reason]}``).
Unknown users get the item-bias ranking (or the mean user for factor models), ``known=False``.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

try:
    import mlflow
    from mlflow.pyfunc import PythonModel
except ImportError:  # pragma: no cover - save_scorer works without mlflow
    mlflow, PythonModel = None, object


def save_scorer(path: Path, kind: str, user_ids: list[str], item_ids: list[str], user_emb: np.ndarray,
                item_emb: np.ndarray, item_bias: np.ndarray, hist_indptr: np.ndarray, hist_indices: np.ndarray,
                top_k: int, reasons: dict | None = None, model_key: str = "") -> Path:
    """Write the artifact directory. ``item_ids[0]`` is the padding id ``""``."""
    path.mkdir(parents=True, exist_ok=True)
    if reasons:
        (path / "reasons.json").write_text(json.dumps(reasons))
    np.savez(path / "model.npz", user_emb=user_emb.astype(np.float32), item_emb=item_emb.astype(np.float32),
             item_bias=item_bias.astype(np.float32), history_indptr=hist_indptr.astype(np.int64),
             history_indices=hist_indices.astype(np.int32))
    (path / "meta.json").write_text(json.dumps({"kind": kind, "user_ids": user_ids, "item_ids": item_ids,
                                                "top_k": top_k, "model_key": model_key}))
    return path


class TopKModel(PythonModel):
    def load_context(self, context) -> None:
        self.load(Path(context.artifacts["model"]))

    def load(self, path: Path) -> "TopKModel":
        z = np.load(path / "model.npz")
        meta = json.loads((path / "meta.json").read_text())
        self.user_emb, self.item_emb, self.item_bias = z["user_emb"], z["item_emb"], z["item_bias"]
        self.indptr, self.indices = z["history_indptr"], z["history_indices"]
        self.item_ids = np.asarray(meta["item_ids"], dtype=object)
        self.user_pos = {u: i for i, u in enumerate(meta["user_ids"])}
        self.item_pos = {it: i for i, it in enumerate(meta["item_ids"]) if i > 0}
        self.top_k = int(meta["top_k"])
        self.reasons = json.loads((path / "reasons.json").read_text()) if (path / "reasons.json").exists() else {}
        self.mean_user = self.user_emb.mean(0) if len(self.user_emb) else np.zeros(self.item_emb.shape[1], np.float32)
        return self

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        k = int((params or {}).get("k", self.top_k))
        users = model_input["user_id"].astype(str).tolist()
        idx = np.array([self.user_pos.get(u, -1) for u in users])
        known = idx >= 0
        emb = np.where(known[:, None], self.user_emb[np.maximum(idx, 0)] if len(self.user_emb) else 0.0,
                       self.mean_user[None, :])                               # (B, F)
        scores = emb @ self.item_emb.T + self.item_bias[None, :]              # (B, N + 1)
        scores[:, 0] = -np.inf
        for row, u in enumerate(idx):
            if "exclude" in model_input.columns and isinstance(model_input["exclude"].iloc[row], (list, np.ndarray)):
                ex = [self.item_pos[i] for i in model_input["exclude"].iloc[row] if i in self.item_pos]
            elif u >= 0:
                ex = self.indices[self.indptr[u]:self.indptr[u + 1]]
            else:
                ex = []
            scores[row, ex] = -np.inf
        k = min(k, scores.shape[1] - 1)
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]                  # (B, k) unordered
        order = np.argsort(-np.take_along_axis(scores, top, 1), axis=1, kind="stable")
        top = np.take_along_axis(top, order, 1)                               # (B, k) best first
        out = pd.DataFrame({"user_id": users, "item_ids": [list(self.item_ids[t]) for t in top],
                            "scores": [list(map(float, scores[r, t])) for r, t in enumerate(top)],
                            "known": known})
        if (params or {}).get("reasons"):
            stored = [self.reasons.get(u) for u in users]
            out["reason"] = [r[1] if r and len(items) and items[0] == r[0] else None
                             for r, items in zip(stored, out["item_ids"], strict=True)]
        return out


if mlflow is not None and __name__ != "pipelines.serving":  # executed by MLflow as models-from-code
    mlflow.models.set_model(TopKModel())
