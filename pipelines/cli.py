"""The ``recpipe`` command line. Nothing is parsed at import; ``main(argv) -> int``.

  recpipe run      [--config FILE] [--ds YYYY-MM-DD] [--home DIR] [--until STAGE | --stages a,b] [--set k=v ...]
  recpipe stage    NAME [same options]
  recpipe backfill --from YYYY-MM-DD --to YYYY-MM-DD [--force] [same options]
  recpipe promote  --model NAME [--ds YYYY-MM-DD] [same options]
  recpipe promote  --model NAME --history [same options]
  recpipe rollback --model NAME [--to-version N] [--reason TEXT] [same options]
  recpipe tune     wals|sasrec|grasp [same options]
  recpipe score    --model NAME[@alias] --users PATH --out PATH [--k K] [--partitions N] [same options]
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

FIXES = {
    "ConfigError": "correct the config file or the --set override named above",
    "DataError": "fix the input named above, then re-run the stage",
    "FileNotFoundError": "run the earlier stages for this ds first (recpipe run --ds DS), or check the path",
    "LookupError": "run the pipeline (recpipe run) so the model is registered first",
    "DayBusy": "wait for the other run of this day to end, then run again",
    "OSError": "make sure the home (--home or RECPIPE_HOME) and the paths named above are writable and have space",
}


def _date(text: str) -> str:
    try:
        return dt.date.fromisoformat(text).isoformat()
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a date YYYY-MM-DD") from None


def _common(p: argparse.ArgumentParser, ds: bool = True) -> None:
    p.add_argument("--config", default=None, help="YAML config (default: pipelines/conf/synthetic.yaml)")
    p.add_argument("--home", default=None, help="RECPIPE_HOME (default: $RECPIPE_HOME or ./.recpipe)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set wals.factors=64 (repeatable)")
    if ds:
        p.add_argument("--ds", type=_date, default=dt.date.today().isoformat(), help="logical date (default: today)")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="recpipe", description="LLM-enhanced recommendation: nightly pipeline")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run the pipeline for one ds")
    _common(r)
    g = r.add_mutually_exclusive_group()
    g.add_argument("--until", default=None, help="run stages up to and including this one")
    g.add_argument("--stages", default=None, help="comma-separated stages to run (in pipeline order)")
    s = sub.add_parser("stage", help="run one stage for one ds")
    s.add_argument("name")
    _common(s)
    b = sub.add_parser("backfill", help="run the pipeline for each day in [from, to], in order")
    b.add_argument("--from", dest="start", type=_date, required=True)
    b.add_argument("--to", dest="end", type=_date, required=True)
    b.add_argument("--force", action="store_true", help="re-run days that already succeeded")
    _common(b, ds=False)
    pr = sub.add_parser("promote", help="move 'champion' to the challenger if it wins on the same evaluation")
    pr.add_argument("--model", required=True, help="registered model name, e.g. popularity or wals")
    pr.add_argument("--ds", type=_date, default=None, help="evaluation day (default: latest successful run)")
    pr.add_argument("--history", action="store_true",
                    help="print every recorded promotion and rollback decision of the model instead; change nothing")
    _common(pr, ds=False)
    rb = sub.add_parser("rollback", help="move 'champion' back to the previous champion (or --to-version)")
    rb.add_argument("--model", required=True, help="registered model name, e.g. wals")
    rb.add_argument("--to-version", default=None, help="registered version to make champion (default: the champion "
                    "the current one replaced)")
    rb.add_argument("--reason", default=None, help="why; kept with the decision")
    _common(rb, ds=False)
    t = sub.add_parser("tune", help="grid search on valid only, then evaluate the chosen model once on test")
    t.add_argument("model", choices=["wals", "sasrec", "grasp"])  # pipelines.tuning.TUNERS (not imported here: it loads the pipeline)
    _common(t)
    sc = sub.add_parser("score", help="score a user file with a registered model on Spark (mlflow spark_udf)")
    sc.add_argument("--model", required=True, help="registered model and alias, e.g. sasrec@champion (default "
                    "alias: champion)")
    sc.add_argument("--users", required=True, help="Parquet file/folder or CSV with user_id and optional history, "
                    "exclude (item ids, oldest first: a list column, or space-separated in CSV)")
    sc.add_argument("--out", required=True, help="Parquet folder to write (replaced whole when complete)")
    sc.add_argument("--k", type=int, default=None, help="items per user (default: mlflow.top_k)")
    sc.add_argument("--partitions", type=int, default=0, help="repartition the users into N tasks (default: as read)")
    _common(sc, ds=False)
    return p


def _fail(stage: str, ds: str | None, exc: BaseException, message: str | None = None, fix: str | None = None) -> int:
    from pipelines.secrets import redact

    kind = type(exc).__name__
    fix = fix or next((v for k, v in FIXES.items() if k in {c.__name__ for c in type(exc).__mro__}),
               "see the stage's record in runs/<ds>/stages/ for the traceback")
    where = f" for ds={ds}" if ds else ""
    text = message if message is not None else redact(str(exc))
    print(f"recpipe: stage '{stage}' failed{where}: {text} ({kind}). Next step: {fix}.", file=sys.stderr)
    return 2


def _run_days(cfg, home: Path, days: list[str], stages: list[str], force: bool = True) -> int:
    from pipelines import runner
    from pipelines.locks import DayBusy
    from pipelines.summary import is_done

    for ds in days:
        if not force and is_done(home, ds):
            print(f"[{ds}] already successful; skipping (use --force to re-run)")
            continue
        try:
            summary = runner.run(cfg, ds, home, stages)
        except runner.StageFailed as exc:
            return _fail(exc.stage, exc.ds, exc.cause, exc.message)
        except DayBusy as exc:
            return _fail("run", ds, exc)
        if summary is None:  # a non-zero rank under torchrun/deepspeed: rank 0 reports
            continue
        timings = ", ".join(f"{k} {v['seconds']:.1f}s" for k, v in summary["stages"].items())
        print(f"[{ds}] {summary['status']}: {timings}")
        print(f"[{ds}] summary: {home / 'runs' / ds / 'summary.json'}; mlflow run: {summary['mlflow']['run_id']} "
              f"({summary['mlflow']['tracking_uri']})")
    return 0


def _promote(cfg, home: Path, model: str, ds: str | None, history: bool = False) -> int:
    from pipelines import promotion

    if history:
        lines = promotion.history_lines(cfg, home, model)
        print("\n".join(lines) if lines else f"no promotion decisions recorded for '{model}'")
        return 0
    out = promotion.promote(cfg, home, model, ds)
    print(("PROMOTED: " if out["promoted"] else "NOT PROMOTED: ") + out["reason"])
    print(json.dumps({k: v for k, v in out.items() if k != "reason"}, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from pipelines.config import ConfigError, load_config
    from pipelines.context import resolve_home
    from pipelines.graph import select

    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as exc:
        return _fail("config", None, exc)
    home = resolve_home(args.home)
    try:
        if args.cmd == "run":
            return _run_days(cfg, home, [args.ds], select(args.until, args.stages))
        if args.cmd == "stage":
            return _run_days(cfg, home, [args.ds], select(stages=args.name))
        if args.cmd == "backfill":
            start, end = dt.date.fromisoformat(args.start), dt.date.fromisoformat(args.end)
            if end < start:
                raise ValueError(f"--to {args.end} is before --from {args.start}")
            days = [(start + dt.timedelta(d)).isoformat() for d in range((end - start).days + 1)]
            return _run_days(cfg, home, days, select(), force=args.force)
        if args.cmd == "promote":
            return _promote(cfg, home, args.model, args.ds, args.history)
        if args.cmd == "rollback":
            from pipelines import promotion

            out = promotion.rollback(cfg, home, args.model, args.to_version, args.reason)
            print(f"ROLLED BACK: {out['reason']}")
            return 0
        if args.cmd == "tune":
            from pipelines.tuning import TUNERS

            out = TUNERS[args.model](cfg, args.ds, home)
            print(json.dumps(out["chosen"], indent=2))
            return 0
        if args.cmd == "score":
            from pipelines.batch import score

            out = score(cfg, home, args.model, args.users, args.out, args.k, args.partitions)
            print(f"scored {out['rows']} users with {out['model']} (k={out['k']}) into {out['out']} "
                  f"({out['files']} Parquet files)")
            return 0
    except (ValueError, LookupError, OSError) as exc:
        fix = (f"see `recpipe promote --history --model {args.model}` for the versions and pass --to-version N"
               if args.cmd == "rollback" and not isinstance(exc, OSError) else None)
        if args.cmd == "score" and isinstance(exc, ValueError):
            fix = "correct the users file or the option named above and score again"
        return _fail(args.cmd, getattr(args, "ds", None), exc, fix=fix)
    return 1


if __name__ == "__main__":
    sys.exit(main())
