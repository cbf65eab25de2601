"""The models the evaluate stage scores, each a ``Scorer`` (``score(users, phase) -> (B, N + 1)``) plus the arrays
served through MLflow (``user_emb``, ``item_emb``, ``item_bias``; see ``pipelines.serving``).

* ``Popularity``: interaction counts in the phase's history.
* ``FactorScorer``: a dot product ``U_phase[users] @ V_phase.T``; serves WALS factors and every model whose training
  stage writes ``vectors.npz`` (user vectors per phase and the item table; see ``pipelines.graph.Stage.models``).
* ``CascadeScorer``: one model re-ranks another's top-k (``llmrec.rerank_from``); evaluated, not served.
* ``<model>_late_fusion`` for each model of ``eval.late_fusion``: its scores plus a text match to the user's history
  (``pipelines.evaluation.fusion``); evaluated, not served.
* With ``split.cold_items``: the cold-item baselines (``add_cold_start``; content kNN, choices and the text vectors
  in ``pipelines.evaluation.cold_start``): ``filled`` (kNN fill-in of SASRec's and WALS's cold rows) and
  ``regressed`` (a ridge map from text vector to SASRec's item row) and ``gated`` (SASRec's scores for warm items,
  the text gate for cold ones, its threshold under the warm bound); evaluated, not served. And the day-one path
  of every served factor model (``day_one``): WALS, SASRec, GRASP and the LLM recommender are scored and served
  with their cold items' rows from the path chosen on the cold-valid users, ``<name>_as_trained`` evaluated
  beside them.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np

from features.cold_start import fill_in, gate_threshold, norm_matched, ridge_fit, ridge_predict, text_gate
from jobs import warehouse
from pipelines.backends.wals import SCRATCH, load_factors
from pipelines.context import StageContext
from pipelines.evaluation import cold_start
from pipelines.evaluation.data import evaluation_users
from pipelines.evaluation.fusion import late_fusion, standardise
from pipelines.evaluation.protocol import EvalData, Scorer, metrics_from_ranks, target_ranks
from pipelines.graph import STAGES

Served = tuple[Scorer, dict | None]  # the scorer and what serving needs of it (None: evaluated, not served)


class Popularity:
    """Most-popular baseline: score = interaction count in the phase's history (train, or train + valid)."""

    def __init__(self, data: EvalData) -> None:
        self.counts = {ph: data.popularity(ph).astype(np.float32) for ph in ("valid", "test")}

    def score(self, users: np.ndarray, phase: str) -> np.ndarray:
        return np.broadcast_to(self.counts[phase], (len(users), len(self.counts[phase])))


class FactorScorer:
    """score(users, phase) = U_phase[users] @ V_phase.T: (B, F) x (F, N + 1) -> (B, N + 1)."""

    def __init__(self, by_phase: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
        self.by_phase = by_phase

    def score(self, users: np.ndarray, phase: str) -> np.ndarray:
        u, v = self.by_phase[phase]
        return u[users] @ v.T


class CascadeScorer:
    """``rerank`` orders ``base``'s top ``k`` items; every other item keeps ``base``'s order below them. The scores
    returned encode exactly that order.

    Within the top ``k`` the order is by ``mix * z(rerank) + (1 - mix) * z(base)``, ``z`` standardising each user's
    ``k`` scores: ``mix=1`` is the re-ranker alone, lower values keep part of the base model's own judgement.
    The top ``k`` are taken over all items, as ``base`` scores them: the protocol, not the scorer, removes the user's
    history (a scorer never knows which history item is a repeated target). So the cascade's HR@k equals ``base``'s:
    it only reorders what ``base`` put in its top ``k``.
    """

    def __init__(self, base: Scorer, rerank: Scorer, k: int, mix: float = 1.0) -> None:
        self.base, self.rerank, self.k, self.mix = base, rerank, k, mix
        self.notes: dict = {}

    def score(self, users: np.ndarray, phase: str) -> np.ndarray:
        b = np.array(self.base.score(users, phase), dtype=np.float32)          # (B, N + 1)
        cand = b.copy()
        cand[:, 0] = -np.inf
        k = min(self.k, cand.shape[1] - 1)
        top = np.argpartition(-cand, k - 1, axis=1)[:, :k]                     # (B, k) base's top k
        rows = np.arange(len(users))[:, None]
        rest = cand.copy()
        rest[rows, top] = -np.inf
        floor = np.where(np.isfinite(rest).any(1), np.max(rest, axis=1, initial=-np.inf, where=np.isfinite(rest)), 0.0)
        lt = standardise(np.asarray(self.rerank.score(users, phase), dtype=np.float32)[rows, top])  # (B, k)
        if self.mix < 1.0:
            lt = self.mix * lt + (1.0 - self.mix) * standardise(b[rows, top])
        b[rows, top] = lt - lt.min(1, keepdims=True) + floor[:, None] + 1.0    # above every other candidate
        return b


MIX_GRID = (0.0, 0.25, 0.5, 0.75, 1.0)


def cascade(base: Scorer, rerank: Scorer, k: int, mix: float, data: EvalData, users: np.ndarray) -> Served:
    """A cascade; with ``mix < 0`` the mix is chosen on the valid phase (full-ranking NDCG@10 of ``users``) over
    ``MIX_GRID``, never on test. The chosen mix and the valid grid are returned beside the scorer."""
    grid = {}
    if mix < 0:
        who = users[data.valid[users] > 0]
        dummy = np.zeros((data.n_users, 1), np.int32)                          # only the full ranking is read
        for m in MIX_GRID:
            full, *_ = target_ranks(CascadeScorer(base, rerank, k, m), data, "valid", who, dummy, 1024)
            grid[m] = metrics_from_ranks(full, (10,))["NDCG@10"]
        mix = max(grid, key=grid.get)
    scorer = CascadeScorer(base, rerank, k, mix)
    scorer.notes = {"rerank_k": k, "rerank_mix": mix, "chosen_on": "valid NDCG@10" if grid else "config",
                    "valid_NDCG@10_by_mix": grid}
    return scorer, None


def popularity(data: EvalData) -> Served:
    m = Popularity(data)
    return m, {"user_emb": np.zeros((data.n_users, 0)), "item_emb": np.zeros((data.n_items + 1, 0)),
               "item_bias": m.counts["test"]}


def wals(ctx: StageContext, data: EvalData) -> Served:
    """WALS: test-phase factors (fit on train + valid when ``wals.refit_on_valid``), valid-phase from train only.

    With ``refit_on_valid`` the train-only fit (zone ``scratch``) must exist: scoring the valid targets with the
    train + valid fit would let the factors see the targets, so a missing one is an error, never a silent fallback.
    """
    test = load_factors(ctx, "warehouse", data.n_users, data.n_items)
    if not ctx.cfg.wals.refit_on_valid:
        return _factors(data, test, test)                                    # the warehouse fit is train-only
    for table in ("user_factors", "item_factors"):
        scratch = warehouse.partition_path(ctx.home, table, ctx.ds, SCRATCH)
        if not scratch.exists():
            raise FileNotFoundError(
                f"evaluate needs WALS's train-only fit for the valid phase, but {scratch} (table '{table}', zone "
                f"'{SCRATCH}', ds={ctx.ds}) does not exist; the warehouse factors were fit on train + valid "
                f"(wals.refit_on_valid) and would see the valid targets. Fix: re-run the 'wals' stage for "
                f"ds={ctx.ds} (recpipe stage wals --ds {ctx.ds}), which writes both fits.")
    return _factors(data, load_factors(ctx, SCRATCH, data.n_users, data.n_items), test)


def _factors(data: EvalData, valid: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray]) -> Served:
    return FactorScorer({"valid": valid, "test": test}), {
        "user_emb": test[0], "item_emb": test[1], "item_bias": np.zeros(data.n_items + 1, np.float32)}


def vectors(path: Path, data: EvalData) -> Served:
    """A trained model from its ``vectors.npz``: ``user_valid``/``user_test`` (U, H) and ``items`` (N + 1, H);
    ``reasons.json`` beside it (``{user_id: [item_id, reason]}``), if any, is served with it."""
    z = np.load(path)
    items = z["items"]
    if z["user_test"].shape[0] != data.n_users or items.shape[0] != data.n_items + 1:
        raise ValueError(f"{path} was trained on another split of this day: re-run the stage that wrote it")
    arrays = {"user_emb": z["user_test"], "item_emb": items, "item_bias": np.zeros(data.n_items + 1, np.float32)}
    if (path.parent / "reasons.json").exists():
        arrays["reasons"] = json.loads((path.parent / "reasons.json").read_text())
    if (path.parent / "result.json").exists():
        arrays["model_key"] = json.loads((path.parent / "result.json").read_text()).get("model_key", "")
    return FactorScorer({"valid": (z["user_valid"], items), "test": (z["user_test"], items)}), arrays


def model_zoo(ctx: StageContext, skipped: dict[str, str] | None = None) -> dict[str, Callable[[EvalData], Served]]:
    """The models to evaluate this day: name -> factory(data). Popularity always; WALS and trained models when
    their outputs exist; with the cold-item protocol on, the cold-item baselines (``cold_start``) whose inputs
    exist, a reason for each one left out going to ``skipped``."""
    zoo: dict[str, Callable[[EvalData], Served]] = {"popularity": popularity}
    if warehouse.partition_path(ctx.home, "user_factors", ctx.ds).exists():
        zoo["wals"] = lambda d: wals(ctx, d)
    for stage in STAGES:
        for name in stage.models:
            path = ctx.model_dir(stage.name, name) / "vectors.npz"
            if path.exists():
                zoo[name] = lambda d, path=path: vectors(path, d)
    c = ctx.cfg.llmrec
    if c.rerank_from and c.rerank_from in zoo and "llmrec" in zoo:
        def _cascade(d: EvalData) -> Served:
            return cascade(zoo[c.rerank_from](d)[0], zoo["llmrec"](d)[0], c.rerank_k, c.rerank_mix, d,
                           evaluation_users(d, ctx.cfg.eval))

        zoo[f"llmrec_cascade_{c.rerank_from}"] = _cascade
    skipped = {} if skipped is None else skipped
    add_late_fusion(ctx, zoo, skipped)
    add_cold_start(ctx, zoo, skipped)
    return zoo


def add_late_fusion(ctx: StageContext, zoo: dict[str, Callable[[EvalData], Served]], skipped: dict[str, str]) -> None:
    """``<model>_late_fusion`` for each model of ``eval.late_fusion`` this day has (``fusion.late_fusion``), from
    the item text vectors of ``eval.late_fusion_text``; a reason in ``skipped`` for each one that cannot be had."""
    source, batch = ctx.cfg.eval.late_fusion_text, ctx.cfg.eval.batch_size
    why = cold_start.text_missing(ctx, source) if ctx.cfg.eval.late_fusion else None
    for name in ctx.cfg.eval.late_fusion:
        if name not in zoo or why:
            skipped[f"{name}_late_fusion"] = why or f"no {name} scores for ds={ctx.ds}: train it first"
            continue
        zoo[f"{name}_late_fusion"] = lambda d, m=zoo[name]: late_fusion(
            m(d)[0], cold_start.text_vectors(ctx, d.n_items, source), d, source, batch,
            align=ctx.cfg.eval.late_fusion_align)


# ----------------------------------------------------------------------------- the cold-item baselines (issue 38)

def filled(base: FactorScorer, text: np.ndarray, data: EvalData, fit_on: dict[str, str],
           k: int = cold_start.FILL_K) -> Served:
    """``base`` with each cold item's row, per phase, the mean of its ``k`` most text-similar trained warm items'
    rows; ``fit_on``: the history each phase's item table was fit on (``trained_items``)."""
    new = np.flatnonzero(data.cold_mask())               # the cold items, both halves
    by_phase, donors = {}, {}
    for phase, (u, v) in base.by_phase.items():
        d = cold_start.trained_items(data, v, fit_on[phase])
        by_phase[phase] = (u, fill_in(v, text, new, d, k)[0])
        donors[phase] = int(len(d))
    m = FactorScorer(by_phase)
    m.notes = {"k": k, "cold_items": int(len(new)), "donors_by_phase": donors, "text_source": cold_start.TEXT_SOURCE}
    return m, None


def regressed(base: FactorScorer, text: np.ndarray, data: EvalData, batch: int = 1024,
              lambdas: tuple[float, ...] = cold_start.RIDGE_GRID,
              scales: tuple[float, ...] = cold_start.SCALE_GRID) -> Served:
    """``base`` (SASRec: one item table for both phases, fit on train) with each cold item's row the ridge map of its
    text vector, penalty and norm scale chosen on the cold-valid users."""
    new = np.flatnonzero(data.cold_mask())               # the cold items, both halves
    items = base.by_phase["valid"][1]
    donors = cold_start.trained_items(data, items, "valid")
    fits = {lam: ridge_fit(text[donors], items[donors], lam) for lam in lambdas}

    def table(lam: float, scale: float) -> np.ndarray:
        out = items.copy()
        out[new] = norm_matched(ridge_predict(text[new], *fits[lam]), items[donors], scale)
        return out

    def scorer(lam: float, scale: float) -> FactorScorer:
        t = table(lam, scale)
        return FactorScorer({ph: (u, t) for ph, (u, _) in base.by_phase.items()})

    cands = {(lam, s): (lambda lam=lam, s=s: scorer(lam, s)) for lam in lambdas for s in scales}
    (lam, scale), grid, n = cold_start.choose_on_cold_valid(cands, data, batch)
    m = scorer(lam, scale)
    by = {str(a): {str(s): v for (b, s), v in grid.items() if b == a} for a in lambdas} if grid else {}
    m.notes = {"ridge_lambda": lam, "norm_scale": scale, "donors": int(len(donors)), "cold_items": int(len(new)),
               "chosen_on": cold_start.CHOSEN_ON if grid else "no cold-valid users: first of the grid",
               "cold_valid_users": n,
               "cold_valid_NDCG@10_by_lambda_scale": by, "text_source": cold_start.TEXT_SOURCE}
    return m, None


def gated(base: FactorScorer, text: np.ndarray, data: EvalData, tolerance: float, batch: int) -> Served:
    """``base`` with each cold item scored through the text gate (``features.cold_start.text_gate``: the cold item's
    text against the user's last item, in deviations of that user's usual match, ``GATE_GAMMA`` per deviation above
    the threshold). The threshold is scanned on the valid phase from the highest down while the warm-valid NDCG@10
    stays within ``tolerance`` of ``base``'s own; the best cold-valid NDCG@10 among those wins (none: ``base`` as
    trained, threshold None). Its notes hold every scanned threshold's cold-valid and warm-valid NDCG@10: the valid
    trade-off, what showing new items costs the other shoppers. Evaluated, not served (serving recomputes a
    sequential model's user state from the live sequence, and the gate's user vector needs the last item's text)."""
    cold_users, warm_users = cold_start.cold_valid_users(data), cold_start.warm_valid_users(data)
    own_warm = cold_start.valid_ndcg(base, data, warm_users, batch)
    gamma = cold_start.GATE_GAMMA
    gate = {ph: text_gate(u, v, cold_start.profiles(data, text, ph, 0.0), text, data.cold_mask(), gamma, 0.0)
            for ph, (u, v) in base.by_phase.items()}                             # the last item alone; built once

    def scorer(t: float) -> FactorScorer:
        return FactorScorer({ph: (gate_threshold(u, gamma, t), v) for ph, (u, v) in gate.items()})

    grid, best = {}, None
    for t in cold_start.GATE_THRESHOLDS if len(cold_users) else ():
        m = scorer(t)
        grid[t] = {"cold": cold_start.valid_ndcg(m, data, cold_users, batch),
                   "warm": cold_start.valid_ndcg(m, data, warm_users, batch)}
        if grid[t]["warm"] < (1.0 - tolerance) * own_warm:
            break                                                    # lower thresholds show more: cost more
        if best is None or grid[t]["cold"] > grid[best]["cold"]:
            best = t
    m = FactorScorer(base.by_phase) if best is None else scorer(best)
    m.notes = {"gamma": gamma, "threshold": best, "profile": "last history item",
               "warm_tolerance": tolerance, "warm_valid_NDCG@10_own": own_warm,
               "chosen_on": f"cold-valid NDCG@10, warm-valid NDCG@10 within {tolerance:.0%} of the model's own",
               "valid_NDCG@10_by_threshold": {str(t): g for t, g in grid.items()},
               "text_source": cold_start.TEXT_SOURCE}
    return m, None


def add_cold_start(ctx: StageContext, zoo: dict[str, Callable[[EvalData], Served]], skipped: dict[str, str]) -> None:
    """Add the cold-item baselines to ``zoo`` (after the day's base models) when the split held cold items out and
    their inputs exist, and put each served factor model on its day-one path (``day_one``; the model as trained
    stays as ``<name>_as_trained``); ``skipped`` receives a reason for each one left out. Without cold items
    nothing changes."""
    if not warehouse.partition_path(ctx.home, "cold_items", ctx.ds).exists():
        return
    why = cold_start.text_missing(ctx)
    if why:
        skipped.update({name: why for name in cold_start.MODELS})
        return
    cache: dict[int, np.ndarray] = {}

    def text(d: EvalData) -> np.ndarray:
        if d.n_items not in cache:
            cache[d.n_items] = cold_start.text_vectors(ctx, d.n_items)
        return cache[d.n_items]

    batch, tolerance = ctx.cfg.eval.batch_size, ctx.cfg.eval.day_one_warm_tolerance
    zoo["content_knn"] = lambda d: cold_start.content_knn(d, text(d), batch)
    zoo["content_knn_last"] = lambda d: cold_start.content_knn_last(d, text(d))
    if "sasrec" in zoo:
        sasrec = zoo["sasrec"]
        zoo["sasrec_fill_in"] = lambda d: filled(sasrec(d)[0], text(d), d, {"valid": "valid", "test": "valid"})
        zoo["sasrec_regressor"] = lambda d: regressed(sasrec(d)[0], text(d), d, batch)
        zoo["sasrec_text_gate"] = lambda d: gated(sasrec(d)[0], text(d), d, tolerance, batch)
    else:
        skipped.update(dict.fromkeys(("sasrec_fill_in", "sasrec_regressor", "sasrec_text_gate"),
                                     f"no trained SASRec for ds={ctx.ds} (train_sequential/sasrec/vectors.npz): run "
                                     "train_sequential with sasrec in train_sequential.models"))
    test_fit = "test" if ctx.cfg.wals.refit_on_valid else "valid"           # the history WALS's test fit saw
    if "wals" in zoo:
        wals_base = zoo["wals"]
        zoo["wals_fill_in"] = lambda d: filled(wals_base(d)[0], text(d), d, {"valid": "valid", "test": test_fit})
    else:
        skipped["wals_fill_in"] = f"no WALS factors for ds={ctx.ds}: run the wals stage"
    for name in [n for n in zoo if n in DAY_ONE_MODELS]:   # served from the chosen day-one path; as trained beside
        fit_on = {"valid": "valid", "test": test_fit if name == "wals" else "valid"}
        zoo[f"{name}_as_trained"] = lambda d, m=zoo[name]: (m(d)[0], None)
        zoo[name] = lambda d, m=zoo[name], fit_on=fit_on: day_one(m(d), text(d), d, fit_on, batch, tolerance)


DAY_ONE_MODELS = ("wals", "sasrec", "grasp", "llmrec")  # the served factor models


def day_one(base: Served, text: np.ndarray, data: EvalData, fit_on: dict[str, str], batch: int,
            tolerance: float) -> Served:
    """A served factor model with its cold items' rows from its day-one path: ``own`` (as trained: an ID model's
    untrained row, the text path of GRASP and the LLM recommender), ``fill_in`` (``filled``) or, for a model with
    one item table for both phases (the sequential models), ``regressor`` (``regressed``). Chosen on the valid
    phase: the best full-ranking NDCG@10 of the cold-valid users among the paths whose warm-valid NDCG@10 is within
    ``tolerance`` (``eval.day_one_warm_tolerance``) of ``own``'s (ties to the earlier path): new items shown above
    what a shopper would have bought are a loss the cold-valid figure alone does not see. The served item table is
    the chosen one; the path, the rows it gave and both grids go with it (``notes``, ``serving.save_scorer``)."""
    scorer, arrays = base
    paths: dict[str, FactorScorer] = {"own": scorer}
    if len(cold_start.cold_valid_users(data)):                          # else nothing to choose on: own
        paths["fill_in"] = filled(scorer, text, data, fit_on)[0]
    if len(paths) > 1 and scorer.by_phase["valid"][1] is scorer.by_phase["test"][1]:
        paths["regressor"] = regressed(scorer, text, data, batch)[0]
    _, cold, n = cold_start.choose_on_cold_valid({k: (lambda m=m: m) for k, m in paths.items()}, data, batch)
    warm_users = cold_start.warm_valid_users(data)
    warm = {k: cold_start.valid_ndcg(m, data, warm_users, batch) for k, m in paths.items()} if cold else {}
    ok = [k for k in paths if k in cold and warm[k] >= (1.0 - tolerance) * warm["own"]]
    path = max(ok, key=cold.get) if ok else "own"
    m = FactorScorer(paths[path].by_phase)
    m.notes = {"day_one": path, "day_one_notes": getattr(paths[path], "notes", {}), "cold_valid_users": n,
               "chosen_on": (f"cold-valid NDCG@10, warm-valid NDCG@10 within {tolerance:.0%} of own" if cold
                             else "no cold-valid users: own"),
               "cold_valid_NDCG@10_by_path": cold, "warm_valid_NDCG@10_by_path": warm}
    if arrays is not None and path != "own":
        arrays = {**arrays, "item_emb": m.by_phase["test"][1], "day_one": path,
                  "day_one_rows": np.flatnonzero(data.cold_mask())}
    elif arrays is not None:
        arrays = {**arrays, "day_one": path}
    return m, arrays
