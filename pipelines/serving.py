"""MLflow models-from-code: the pyfunc every recpipe model is served through.

Input: a DataFrame with ``user_id`` and optionally ``history`` and ``exclude`` (lists of item ids per row).
Output: ``user_id, item_ids (list[str]), scores (list[float]), known`` and, when the request has a ``history``
column, ``unknown_items`` (how many of the row's history ids the model does not know; they are skipped).
``params={"k": 10}`` sets the list length (default: the ``top_k`` the model was registered with, at most the
catalogue); ``params={"reasons": True}`` adds ``reason``: the stored reason for the user's top item when one was
generated for exactly that item (the LLM recommender writes them), else None.

Without ``history`` (or where a row's ``history`` is null) the nightly vectors answer, as they always did: a known
user's stored vector, an unknown user the item-bias ranking (or the mean user for factor models), ``known=False``.

``history`` (item ids, oldest first) is what the user did after the nightly run: it is appended to the user's stored
history (a user the model does not know has none) and the model is run on the result at request time:

* SASRec and GRASP (logged with a ``forward`` folder, ``save_forward``): the model, rebuilt from its config and
  weights, runs its forward pass on the last ``max_len`` items (CPU torch, one batch for the request's rows,
  ``torch.inference_mode``, ``mlflow.serve_threads`` torch threads); the scores are the last position's hidden state against the
  served item vectors, as at night. To score exactly a given sequence, send it with a ``user_id`` the model does
  not know.
* WALS (logged with ``model_config={"foldin": {"regularization", "alpha"}}``): the user factor is the least-squares
  fold-in of the items with the item factors fixed (``pipelines.training.llmrec.FoldIn``, the LLM recommender's
  batched solve).
* The LLM recommender and popularity keep the stored path: a known user gets the nightly vector, an unknown one the
  mean user (``known=False``); the history's items are still excluded and its unknown ids counted. (The LLM
  recommender's forward pass is a Llama backbone: seconds per user on CPU, not a request's budget.)

A known user whose history holds no known item is answered from the stored vector. A row left with no item at all
(an unknown user with an empty or all-unknown history) gets the popularity list (interaction counts of the stored
histories) with ``known=False``; ``known`` is True wherever the list is the user's own. By default a row's own items
(stored history plus the request's) are excluded; ``exclude`` replaces that list.

A bad request is refused with ``MlflowException(error_code=INVALID_PARAMETER_VALUE)`` (HTTP 400 from ``mlflow models
serve``) and a one-line message naming the field: a missing or null ``user_id``, a ``history`` or ``exclude`` that is
not a list of item ids, ``k`` below 1 or above the catalogue's size.

The artifact ``model`` is a directory written by ``save_scorer``: ``model.npz`` (``user_emb (U, F)``,
``item_emb (N + 1, F)`` and ``item_bias (N + 1,)``: score = user_emb @ item_emb.T + item_bias; a popularity model has
F = 0), ``history_indptr/indices`` (CSR of each user's items), ``day_one_rows`` (the items whose rows a day-one
path gave, ``pipelines.evaluation.scorers.day_one``), ``meta.json`` (ids, kind, top_k, ``day_one``: that path) and
optionally ``reasons.json`` (``{user_id: [item_id, reason]}``). A sequential model also logs the artifact ``forward``
(``save_forward``: ``forward.json``, ``weights.safetensors``, for GRASP ``tables.safetensors``): what inference needs,
never optimiser state.
"""
from __future__ import annotations

import json
import shutil
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
                top_k: int, reasons: dict | None = None, model_key: str = "", day_one: str = "",
                day_one_rows: np.ndarray | None = None) -> Path:
    """Write the artifact directory. ``item_ids[0]`` is the padding id ``""``. ``day_one``: the path that gave the
    items without a trained row theirs (``pipelines.evaluation.scorers.day_one``), ``day_one_rows`` those items."""
    path.mkdir(parents=True, exist_ok=True)
    if reasons:
        (path / "reasons.json").write_text(json.dumps(reasons))
    np.savez(path / "model.npz", user_emb=user_emb.astype(np.float32), item_emb=item_emb.astype(np.float32),
             item_bias=item_bias.astype(np.float32), history_indptr=hist_indptr.astype(np.int64),
             history_indices=hist_indices.astype(np.int32),
             day_one_rows=np.zeros(0, np.int64) if day_one_rows is None else np.asarray(day_one_rows, np.int64))
    (path / "meta.json").write_text(json.dumps({"kind": kind, "user_ids": user_ids, "item_ids": item_ids,
                                                "top_k": top_k, "model_key": model_key, "day_one": day_one}))
    return path


def save_forward(path: Path, model) -> Path:
    """What a request-time forward pass of a trained ``models.sasrec.SASRec`` (with or without GRASP's enhancer)
    needs, written to the folder ``path`` (replaced as a whole): ``forward.json`` (``arch``, ``n_items``, the
    ``sasrec`` and ``grasp`` configs), ``weights.safetensors`` (the state dict in float32: parameters only, no optimiser
    state) and, for GRASP, ``tables.safetensors``: its frozen text tables ``item_sem``/``item_nb`` (N + 1, D) and
    ``user_sem``/``user_nb``: (U + 1, D), the last row zero for users the model does not know, when the config reads
    user texts (``user_neighbours``, ``own_user_text``), else (1, D) zeros; with ``sasrec.items.source = text``,
    ``item_text.safetensors``: the standardised item text table (N + 1, D) the item vectors are computed from."""
    import dataclasses

    import torch
    from safetensors.torch import save_file

    from models.grasp import HolisticAttention

    def cpu(t: torch.Tensor) -> torch.Tensor:
        return t.detach().to("cpu", torch.float32 if t.is_floating_point() else t.dtype).contiguous()

    enh = model.enhancer
    if enh is not None and not isinstance(enh, HolisticAttention):
        raise TypeError(f"save_forward knows SASRec and GRASP, not an enhancer {type(enh).__name__}")
    spec = {"arch": "grasp" if enh is not None else "sasrec", "n_items": model.item_emb.num_embeddings - 1,
            "sasrec": dataclasses.asdict(model.cfg)}
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: cpu(v) for k, v in model.state_dict().items()}, str(tmp / "weights.safetensors"))
    if model.item_text is not None:  # the standardised text table the item vectors are computed from
        save_file({"item_text": cpu(model.item_text.text)}, str(tmp / "item_text.safetensors"))
    if enh is not None:
        spec["grasp"] = dataclasses.asdict(enh.cfg)
        spec["user_tables"] = bool(enh.cfg.user_neighbours or enh.cfg.own_user_text)
        tables = {"item_sem": cpu(enh.item_sem), "item_nb": cpu(enh.item_nb)}
        for name in ("user_sem", "user_nb"):
            t = cpu(getattr(enh, name))                                      # (U, D)
            zero = torch.zeros(1, t.shape[1])
            tables[name] = torch.cat([t, zero]) if spec["user_tables"] else zero
        save_file(tables, str(tmp / "tables.safetensors"))
    (tmp / "forward.json").write_text(json.dumps(spec))
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)
    return path


class Forward:
    """A sequential model rebuilt from its artifact (``save_forward``): ``SASRec(config)`` + ``load_state_dict``."""

    def __init__(self, path: Path, item_emb: np.ndarray, day_one_rows: np.ndarray | None = None) -> None:
        """``item_emb`` (N + 1, H): the served item vectors (the model's ``item_table()``, computed at night), the
        rows ``day_one_rows`` given by a day-one path instead (items the model has no trained row for)."""
        import torch
        from safetensors.torch import load_file

        from models.configs import GRASPConfig, ItemsConfig, SASRecConfig
        from models.sasrec import SASRec

        spec = json.loads((path / "forward.json").read_text())
        cfg = SASRecConfig(**{**spec["sasrec"], "items": ItemsConfig(**spec["sasrec"].get("items", {}))})
        n = int(spec["n_items"])
        text = (load_file(str(path / "item_text.safetensors"))["item_text"] if cfg.items.source == "text" else None)
        enhancer = None
        self.user_tables = bool(spec.get("user_tables"))
        if spec["arch"] == "grasp":
            from models.grasp import build

            tables = load_file(str(path / "tables.safetensors"))
            self.unknown_user = tables["user_sem"].shape[0] - 1
            enhancer = build(n, cfg.hidden, cfg.dropout, tables, GRASPConfig(**spec["grasp"]))
        self.model = SASRec(cfg, n, enhancer, text=text)
        self.model.load_state_dict(load_file(str(path / "weights.safetensors")))
        self.model.eval()
        self.max_len = cfg.max_len
        self.items = torch.from_numpy(np.ascontiguousarray(item_emb, np.float32))   # (N + 1, H)
        with torch.inference_mode():
            table = self.model.item_table().detach()                          # (N + 1, H)
        if day_one_rows is not None and len(day_one_rows) and table.shape == self.items.shape:
            rows = torch.from_numpy(np.asarray(day_one_rows, np.int64))
            table[rows] = self.items[rows]                                    # rows the model never trained
        # bf16 training (infra/deepspeed/zero2_gpu.json) wrote its vectors at bf16's ~3 digits; a mix of two
        # trainings differs by far more than that
        if self.items.shape != table.shape or \
                float((table - self.items).abs().max()) > 2e-2 * (1.0 + float(self.items.abs().max())):
            raise ValueError(f"{path} does not hold the weights the served item vectors came from (shapes "
                             f"{tuple(table.shape)} and {tuple(self.items.shape)}): two trainings were mixed")

    def scores(self, seqs: list[np.ndarray], users: np.ndarray) -> np.ndarray:
        """(B, N + 1) scores after each item sequence (item indices, oldest first, non-empty; the last ``max_len``
        are read); ``users`` (B,) user indices, -1 for a user the model does not know."""
        import torch

        width = min(max(len(s) for s in seqs), self.max_len)
        batch = np.zeros((len(seqs), width), np.int64)                      # (B, T) left-padded
        for b, s in enumerate(seqs):
            s = s[-width:]
            batch[b, width - len(s):] = s
        if self.user_tables:
            users = np.where(users >= 0, users, self.unknown_user)
        else:
            users = np.zeros(len(seqs), np.int64)                           # user rows are not read
        with torch.inference_mode():
            h = self.model(torch.from_numpy(batch), torch.from_numpy(users.astype(np.int64)), self.items)
            return (h[:, -1, :] @ self.items.T).numpy()                     # (B, H) x (H, N + 1)


def _refuse(field: str, problem: str) -> Exception:
    """The error for a bad request: one line naming ``field``; the scoring server answers it with HTTP 400."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    return MlflowException(f"Bad request: '{field}' {problem}", error_code=INVALID_PARAMETER_VALUE)


def _item_lists(col: pd.Series, field: str) -> list[list[str] | None]:
    """Each row's item ids, or None where the row has none (null); anything else but a list of strings is refused."""
    out: list[list[str] | None] = []
    for row, v in enumerate(col):
        if v is None or v is pd.NA or (isinstance(v, float) and np.isnan(v)):
            out.append(None)
        elif isinstance(v, (list, tuple, np.ndarray)) and np.ndim(v) == 1 and all(isinstance(i, str) for i in v):
            out.append([str(i) for i in v])
        else:
            raise _refuse(field, f"must be a list of item ids (strings), oldest first; row {row} has "
                                 f"{type(v).__name__} {str(v)[:60]!r}")
    return out


class TopKModel(PythonModel):
    def load_context(self, context) -> None:
        forward, conf = context.artifacts.get("forward"), context.model_config or {}
        self.load(Path(context.artifacts["model"]), Path(forward) if forward else None, conf.get("foldin"),
                  int(conf.get("threads") or 0))

    def load(self, path: Path, forward: Path | None = None, foldin: dict | None = None,
             threads: int = 0) -> "TopKModel":
        """The artifact ``path`` (``save_scorer``); ``forward``: a ``save_forward`` folder (SASRec, GRASP);
        ``foldin``: ``{"regularization", "alpha"}`` of the WALS fit whose factors ``path`` serves; ``threads``: torch's
        threads for the request-time path (``mlflow.serve_threads``; 0 leaves torch's default)."""
        if threads and (forward is not None or foldin):
            import torch

            torch.set_num_threads(threads)
        z = np.load(path / "model.npz")
        meta = json.loads((path / "meta.json").read_text())
        self.kind = meta.get("kind", "")
        self.user_emb, self.item_emb, self.item_bias = z["user_emb"], z["item_emb"], z["item_bias"]
        self.indptr, self.indices = z["history_indptr"], z["history_indices"]
        self.item_ids = np.asarray(meta["item_ids"], dtype=object)
        self.n_items = len(self.item_ids) - 1                                 # the catalogue (0 is padding)
        self.popularity = np.bincount(self.indices, minlength=self.n_items + 1)[: self.n_items + 1].astype(np.float32)
        self.user_pos = {u: i for i, u in enumerate(meta["user_ids"])}
        self.item_pos = {it: i for i, it in enumerate(meta["item_ids"]) if i > 0}
        self.top_k = int(meta["top_k"])
        self.reasons = json.loads((path / "reasons.json").read_text()) if (path / "reasons.json").exists() else {}
        self.mean_user = self.user_emb.mean(0) if len(self.user_emb) else np.zeros(self.item_emb.shape[1], np.float32)
        rows = z["day_one_rows"] if "day_one_rows" in z.files else None           # (older artifacts: none)
        self.forward = Forward(forward, self.item_emb, rows) if forward is not None else None
        self.foldin = None
        if foldin:
            from pipelines.training.llmrec import FoldIn

            self.foldin = FoldIn(self.item_emb, foldin["regularization"], foldin["alpha"])
        return self

    def _k(self, params: dict) -> int:
        k = params.get("k")
        if k is None:  # (served by MLflow, k is always there: the signature holds the default)
            return max(1, min(self.top_k, self.n_items))
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
            raise _refuse("k", f"(params) must be an integer, got {type(k).__name__} {k!r}")
        if not 1 <= k <= self.n_items:
            raise _refuse("k", f"(params) must be from 1 to {self.n_items} (the catalogue's size), got {k}")
        return int(k)

    def _users(self, model_input: pd.DataFrame) -> list[str]:
        if not isinstance(model_input, pd.DataFrame) or "user_id" not in model_input.columns:
            raise _refuse("user_id", "is required: one user id per row")
        missing = np.flatnonzero(model_input["user_id"].isna().to_numpy())
        if len(missing):
            raise _refuse("user_id", f"is missing in row {int(missing[0])} ({len(missing)} row(s) without one)")
        return model_input["user_id"].astype(str).tolist()

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        params = params or {}
        users = self._users(model_input)
        k = self._k(params)
        has_history = "history" in model_input.columns
        histories = _item_lists(model_input["history"], "history") if has_history else [None] * len(users)
        excludes = (_item_lists(model_input["exclude"], "exclude") if "exclude" in model_input.columns
                    else [None] * len(users))
        idx = np.array([self.user_pos.get(u, -1) for u in users], dtype=np.int64)
        known = idx >= 0
        emb = np.where(known[:, None], self.user_emb[np.maximum(idx, 0)] if len(self.user_emb) else 0.0,
                       self.mean_user[None, :])                               # (B, F)
        scores = emb @ self.item_emb.T + self.item_bias[None, :]              # (B, N + 1)
        own = [self.indices[self.indptr[u]:self.indptr[u + 1]] if u >= 0 else np.zeros(0, np.int32) for u in idx]
        unknown = np.zeros(len(users), np.int64)
        run: list[int] = []                                                   # rows scored at request time
        for row, hist in enumerate(histories):
            if hist is None:
                continue
            new = np.array([self.item_pos[i] for i in hist if i in self.item_pos], np.int32)
            unknown[row] = len(hist) - len(new)
            if len(new) == 0 and known[row]:
                continue                                                      # nothing new: the stored vector
            own[row] = np.concatenate([own[row], new])
            if len(own[row]) == 0:                                            # nothing at all to go on
                scores[row], known[row] = self.popularity, False
            elif self.forward is not None or self.foldin is not None:
                run.append(row)
        if run:
            seqs = [own[r] for r in run]
            if self.forward is not None:
                scores[run] = self.forward.scores(seqs, idx[run])
            else:
                scores[run] = self.foldin(seqs) @ self.item_emb.T + self.item_bias[None, :]
            known[run] = True
        scores[:, 0] = -np.inf
        for row in range(len(users)):
            ex = own[row] if excludes[row] is None else [self.item_pos[i] for i in excludes[row] if i in self.item_pos]
            scores[row, ex] = -np.inf
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]                  # (B, k) unordered
        order = np.argsort(-np.take_along_axis(scores, top, 1), axis=1, kind="stable")
        top = np.take_along_axis(top, order, 1)                               # (B, k) best first
        keep = [t[np.isfinite(scores[r, t])] for r, t in enumerate(top)]       # never an excluded item
        out = pd.DataFrame({"user_id": users, "item_ids": [list(self.item_ids[t]) for t in keep],
                            "scores": [list(map(float, scores[r, t])) for r, t in enumerate(keep)],
                            "known": known})
        if has_history:
            out["unknown_items"] = unknown
        if params.get("reasons"):
            stored = [self.reasons.get(u) for u in users]
            out["reason"] = [r[1] if r and len(items) and items[0] == r[0] else None
                             for r, items in zip(stored, out["item_ids"], strict=True)]
        return out


if mlflow is not None and __name__ != "pipelines.serving":  # executed by MLflow as models-from-code
    mlflow.models.set_model(TopKModel())
