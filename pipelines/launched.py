"""A distributed stage started by ``runner.launch`` under a launcher (``deepspeed``, ``torchrun``): every rank runs
the stage; rank 0 keeps its record and refreshes the summary. The Airflow task that launched it holds the day's
locks, so this takes none.

    deepspeed [launcher options] --module pipelines.launched STAGE --ds DS --home HOME [--config F] [--set k=v ...]
"""
from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="pipelines.launched", description=__doc__.splitlines()[0])
    p.add_argument("stage")
    p.add_argument("--ds", required=True)
    p.add_argument("--home", required=True)
    p.add_argument("--config", default=None)
    p.add_argument("--set", dest="overrides", action="append", default=[])
    args = p.parse_args(argv)
    from pipelines import runner
    from pipelines.config import load_config
    from pipelines.context import StageContext, resolve_home

    ctx = StageContext(load_config(args.config, args.overrides), args.ds, resolve_home(args.home))
    try:
        runner.run_stage(args.stage, ctx)
    except runner.StageFailed as exc:
        print(f"recpipe: stage '{exc.stage}' failed for ds={exc.ds}: {exc.message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
