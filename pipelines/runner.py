"""Run stages for one ``ds``: ``run`` (the local runner), ``run_stage`` (one stage), ``run_task`` (Airflow's entry).

Stages are looked up by name in the stage table (``pipelines.graph``) and imported from ``pipelines.stages``;
each stage's record lands in ``runs/<ds>/stages/<name>.json`` and the summary is rebuilt after every stage.
"""
from __future__ import annotations

import importlib
import json
import os
import time
import traceback
from pathlib import Path

from jobs.warehouse import write_json
from pipelines.config import Config, dump_yaml, load_config
from pipelines.context import StageContext, StageResult, resolve_home
from pipelines.generations import Generation
from pipelines.graph import BY_NAME, ORDER
from pipelines.locks import hold
from pipelines.secrets import redact, secret_envs
from pipelines.summary import stage_record_path, write_summary


class StageFailed(RuntimeError):
    def __init__(self, stage: str, ds: str, cause: BaseException, extra_env: tuple[str, ...] = ()) -> None:
        self.stage, self.ds, self.cause = stage, ds, cause
        self.message = redact(str(cause), extra_env)  # what may be printed: secrets masked
        super().__init__(f"stage '{stage}' failed for ds={ds}: {self.message}")


def is_rank0() -> bool:
    """False in the non-zero ranks of torchrun/deepspeed: only rank 0 keeps records and prints summaries."""
    return int(os.environ.get("RANK", "0")) == 0


def execute(name: str, ctx: StageContext) -> StageResult:
    """Import ``pipelines.stages.<name>`` and run it (no records)."""
    result = importlib.import_module(BY_NAME[name].module).run(ctx)
    if not isinstance(result, StageResult):
        raise TypeError(f"stage '{name}' returned {type(result).__name__}, not a StageResult")
    return result


def _summarise(ctx: StageContext) -> dict:
    return write_summary(ctx.run_dir, ctx.ds, ctx.cfg.dataset)


def run_stage(name: str, ctx: StageContext) -> dict:
    """Run one stage, record its timing/counts (or its error), refresh the summary; return the record."""
    if name not in BY_NAME:
        raise ValueError(f"unknown stage '{name}'; stages are {list(ORDER)}")
    if not is_rank0():
        return {"status": "success", **execute(name, ctx).record()}
    rec_path = stage_record_path(ctx.run_dir, name)
    print(f"[{ctx.ds}] {name} ...", flush=True)
    t0 = time.perf_counter()
    try:
        result = execute(name, ctx)
    except Exception as exc:
        extra = secret_envs(ctx.cfg)
        write_json(rec_path, redact({"status": "failed", "seconds": round(time.perf_counter() - t0, 2),
                                     "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()},
                                    extra))
        _summarise(ctx)
        raise StageFailed(name, ctx.ds, exc, extra) from exc
    rec = redact({"status": "success", "seconds": round(time.perf_counter() - t0, 2), **result.record()},
                 secret_envs(ctx.cfg))
    write_json(rec_path, rec)
    _summarise(ctx)
    print(f"[{ctx.ds}] {name} done in {rec['seconds']:.1f} s, rows_out={result.rows_out}", flush=True)
    return rec


def run(cfg: Config, ds: str, home: Path, stages: list[str] | None = None) -> dict | None:
    """Run the stages of one day; the summary (None in a non-zero rank, which writes nothing)."""
    ctx = StageContext(cfg, ds, home)
    selected = list(stages or ORDER)
    if not is_rank0():  # other ranks join the distributed stages only; rank 0 runs the rest and keeps the records
        for name in selected:
            if BY_NAME[name].distributed:
                run_stage(name, ctx)
        return None
    with hold(ctx.run_dir, "day", exclusive=True, what=f"recpipe run of ds={ds}"), \
            Generation(home, ds, ctx.run_dir) as generation:
        (ctx.run_dir / "config.yaml").write_text(dump_yaml(cfg))
        write_json(ctx.run_dir / "plan.json", {"stages": selected})
        for name in selected:
            try:
                run_stage(name, ctx)
            except StageFailed as exc:
                _put_back(ctx, generation, exc)
                raise
        return _summarise(ctx)


def _put_back(ctx: StageContext, generation: Generation, exc: StageFailed) -> None:
    """After a failed stage: the day's warehouse partitions as they were when the run started (so its tables agree),
    noted in the failed stage's record and the error message."""
    restored = generation.restore()
    if not restored:
        return
    rec_path = stage_record_path(ctx.run_dir, exc.stage)
    rec = json.loads(rec_path.read_text()) if rec_path.exists() else {"status": "failed"}
    write_json(rec_path, {**rec, "restored": restored})
    _summarise(ctx)
    exc.message += (f" The day's tables were put back as they were before this run ({', '.join(restored)}), so they "
                    "still agree with each other.")


DISTRIBUTED_SECTIONS = {"train_sequential": "train_sequential", "train_llmrec": "llmrec"}
PROCESS_GROUP_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def launcher_of(cfg: Config, stage: str) -> str:
    """The launcher command line configured for a distributed stage (``<section>.distributed.launcher``), or ''."""
    section = DISTRIBUTED_SECTIONS.get(stage)
    return getattr(getattr(cfg, section).distributed, "launcher", "") if section else ""


def run_task(stage: str, ds: str, config: str | None = None, overrides: list[str] | None = None,
             home: str | None = None) -> dict:
    """Airflow's entry point: one stage, returns the paths it wrote (small, XCom-safe). A distributed stage with a
    ``launcher`` runs under it (every rank in ``pipelines.launched``) while this task holds the day's locks."""
    cfg = load_config(config or None, list(overrides or []))
    ctx = StageContext(cfg, ds, resolve_home(home))
    what = f"task {stage} of ds={ds}"
    with hold(ctx.run_dir, "day", exclusive=False, what=what), hold(ctx.run_dir, stage, exclusive=True, what=what):
        (ctx.run_dir / "config.yaml").write_text(dump_yaml(cfg))
        launcher = launcher_of(cfg, stage)
        rec = launch(stage, ctx, launcher, config, overrides) if launcher else run_stage(stage, ctx)
        return {"stage": stage, "ds": ds, "outputs": rec.get("outputs", {})}


def launch(stage: str, ctx: StageContext, launcher: str, config: str | None, overrides: list[str] | None) -> dict:
    """Run ``stage`` under ``launcher`` (e.g. ``deepspeed --hostfile H --num_gpus 8``) and return rank 0's record;
    a launcher that fails is ``StageFailed`` with rank 0's error when it recorded one."""
    import shlex
    import subprocess
    import sys

    cmd = [*shlex.split(launcher), "--module", "pipelines.launched", stage, "--ds", ctx.ds, "--home", str(ctx.home),
           *(["--config", config] if config else []), *[a for o in (overrides or []) for a in ("--set", o)]]
    if "/" not in cmd[0] and Path(sys.executable).with_name(cmd[0]).exists():
        cmd[0] = str(Path(sys.executable).with_name(cmd[0]))  # this venv's torchrun/deepspeed, whatever PATH holds
    env = {k: v for k, v in os.environ.items() if k not in PROCESS_GROUP_VARS}
    rec_path = stage_record_path(ctx.run_dir, stage)
    rec_path.unlink(missing_ok=True)  # what is read back is this launch's record, never an earlier run's
    print(f"[{ctx.ds}] {stage}: launching {launcher!r}", flush=True)
    try:
        code = subprocess.run(cmd, env=env).returncode
    except FileNotFoundError as exc:
        code, failure = None, f"the launcher {cmd[0]!r} was not found ({exc}); check {stage}'s distributed.launcher"
    rec = json.loads(rec_path.read_text()) if rec_path.exists() else {}
    if code == 0 and rec.get("status") == "success":
        return rec
    if code is not None:
        failure = (rec.get("error") if rec.get("status") == "failed" else None) or \
            f"the launcher {launcher!r} exited with {code} and rank 0 recorded no result"
    raise StageFailed(stage, ctx.ds, RuntimeError(failure), secret_envs(ctx.cfg))
