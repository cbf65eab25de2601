"""Stage (pipelines layer): ``wals``, weighted ALS factors of users and items (engines in ``pipelines.backends.wals``).

With ``wals.refit_on_valid`` (default) the factors for the test targets and for serving are fitted on
train + valid with the same hyperparameters (``DESIGN.md``); valid metrics use a fit on train only, written to
the ``scratch`` zone. ``recpipe tune wals`` (``pipelines.tuning``) chooses the hyperparameters on valid.
The fit's seed is ``wals.seed``, which is the run's top-level ``seed`` unless set; the record says which was used.
"""
from __future__ import annotations

from jobs import warehouse
from pipelines import refresh
from pipelines.backends.wals import SCRATCH, fit
from pipelines.context import StageContext, StageResult


def run(ctx: StageContext) -> StageResult:
    p = ctx.cfg.wals
    plan = refresh.plan(ctx)
    warm = {"base": plan.base, "warm_iterations": ctx.cfg.refresh.wals_iterations} if plan.incremental else {}
    out = {}
    if p.refit_on_valid:
        out["valid_fit"] = fit(ctx, p, ("train",), SCRATCH, **warm)
        out["final_fit"] = fit(ctx, p, ("train", "valid"), "warehouse", **warm)
    else:
        out["final_fit"] = fit(ctx, p, ("train",), "warehouse", **warm)
    fit_s = sum(v["fit_seconds"] for v in out.values())
    final_warm = out["final_fit"].get("refresh", {})
    how = (f"warm from {plan.base}, {final_warm['iterations']} sweeps" if final_warm.get("warm")
           else f"it={p.iterations}")
    print(f"  wals[{p.engine}] factors={p.factors} reg={p.regularization} alpha={p.alpha} seed={p.seed} {how}: "
          f"fit {fit_s:.1f} s")
    final = out["final_fit"]
    return StageResult(final["user_factors"] + final["item_factors"],
                       {t: str(warehouse.partition_path(ctx.home, t, ctx.ds)) for t in ("user_factors", "item_factors")},
                       tables={"user_factors": final["user_factors"], "item_factors": final["item_factors"]},
                       details={"engine": p.engine, "seed": p.seed, "fit_seconds": round(fit_s, 3),
                                "refit_on_valid": p.refit_on_valid,
                                "refresh": {"mode": plan.mode, "reason": plan.reason,
                                            **{k: v.get("refresh", {"warm": False}) for k, v in out.items()}}})
