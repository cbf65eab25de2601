"""A week replayed as nightly runs, twice: ``refresh.mode=incremental`` and ``full``, same seeds, same settings.

    python tests/benchmarks/nightly_replay.py --config pipelines/conf/amazon_beauty.yaml \
        --set data.path=../shared/datasets/amazon-beauty --from 2014-07-01 --to 2014-07-07 --work /tmp/replay

Each day is one ``recpipe run --ds DAY`` (its own process) in a home per mode; the two modes alternate day by day
(incremental, then full), and the results files are rewritten after every day, so a replay cut short still leaves
the days it finished (``days_done``). Before the first day both homes get the same describe and embed caches, filled
by one run of the day before ``--from`` up to ``embed`` (``--warm-day``, default: that day), so the first day's
descriptions are cached in both modes, as in a pipeline that has been running for a while.
A full-length week takes hours on 2 cores: with ``--resume`` a replay that was stopped goes on in the same ``--work``
(same settings, checked) from the first (mode, day) it had not finished; that day's partial outputs (``runs/DAY``,
its checkpoints) are removed first, under the day's lock, so it trains from its start; its record says ``resumed``
and it stays out of the clean mean ratio (the content caches may hold what the stopped run had already described or
embedded). ``touch WORK/stop`` stops a replay cleanly before its next (mode, day), so that nothing is re-run on
resume. Each day's record names the commit it ran at. ``--ahead DAY`` runs, before the days in between, the
incremental days up to DAY and then DAY's full retrain in a copy of the full home (``WORK/full-ahead``): the last
day's comparison comes early in a week that spans sessions; that full run finds the caches of the last full day done
(its describe writes the in-between days' changed users too), so it is marked ``ahead`` and left out of the clean
mean.
Per day and stage it records the wall time, what the stage says it recomputed and reused, and every model's test
NDCG@10 (full ranking, the shared protocol). Results: ``results/nightly_replay{suffix}.{json,md}``; the JSON holds
``days``, ``incremental_over_full_seconds`` (mean of the per-day ratio over days 2..N),
``incremental_over_full_seconds_clean`` (the same over the days neither resumed nor ahead: ``ratio_days``),
``day7_ndcg10`` (the last day's test NDCG@10 per model and mode; named for the week this was made for) and the
per-day, per-stage detail.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import hashlib
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from jobs.warehouse import write_json  # noqa: E402
from pipelines import locks  # noqa: E402
from pipelines.graph import STAGES  # noqa: E402
from tests.benchmarks.common import commit, day_args, machine, parser, recpipe, write_results  # noqa: E402

MODES = ("incremental", "full")
CACHES = ("describe.sqlite", "embed.sqlite", "web_queries.sqlite", "search.sqlite")


def days(start: str, end: str) -> list[str]:
    a, b = dt.date.fromisoformat(start), dt.date.fromisoformat(end)
    return [(a + dt.timedelta(i)).isoformat() for i in range((b - a).days + 1)]


def run_day(home: Path, ds: str, config: str | None, sets: list[str], log: Path, until: str | None = None,
            stages: str | None = None) -> float:
    return recpipe(["run", *day_args(home, ds, config, sets),
                    *(["--until", until] if until else ["--stages", stages] if stages else [])], log)


def seed_caches(src: Path, dst: Path) -> None:
    """The content-hash caches of the LLM and encoder stages (SQLite, with their WAL files when present)."""
    (dst / "cache").mkdir(parents=True, exist_ok=True)
    for name in CACHES:
        for f in (src / "cache").glob(name + "*"):
            shutil.copy2(f, dst / "cache" / f.name)


def day_record(home: Path, ds: str, wall: float) -> dict:
    s = json.loads((home / "runs" / ds / "summary.json").read_text())
    stages = {}
    for name, rec in s["stages"].items():
        r = {"seconds": rec.get("seconds"), "rows_out": rec.get("rows_out")}
        for k in ("refresh", "generated", "cached", "encoded"):
            if k in rec:
                r[k] = rec[k]
        if name == "train_sequential":
            r["epochs_run"] = {m: v.get("epochs_run") for m, v in rec.get("models", {}).items()}
        stages[name] = r
    ndcg = {m: v["full"]["NDCG@10"] for m, v in s.get("metrics", {}).items()}
    return {"wall_seconds": round(wall, 1), "stage_seconds": round(sum(v["seconds"] or 0 for v in stages.values()), 1),
            "tables": s.get("tables", {}), "stages": stages, "test_NDCG@10": ndcg,
            "refresh": json.loads((home / "runs" / ds / "refresh.json").read_text())
            if (home / "runs" / ds / "refresh.json").exists() else None}


def state_key(args: argparse.Namespace, week: list[str], warm_day: str, stages: str | None) -> str:
    """What a stopped replay must share with the one that resumes it."""
    what = [args.config, args.sets, week, warm_day, args.full_every_days, stages]
    if args.config:
        what.append(Path(args.config).read_text())
    return hashlib.sha256(json.dumps(what, default=str).encode()).hexdigest()[:16]


def clear_day(home: Path, ds: str) -> None:
    """A day a stopped run had begun: its run folder and checkpoints go, so the re-run starts it from the start.
    Under the day's lock: a ``recpipe run`` of that day still alive (the replay stopped, its child not) is refused."""
    try:
        with locks.hold(home / "runs" / ds, "day", exclusive=True, what=f"--resume clearing {ds} in {home}"):
            shutil.rmtree(home / "runs" / ds, ignore_errors=True)
            for d in (home / "checkpoints").glob(f"*/{ds}"):
                shutil.rmtree(d, ignore_errors=True)
    except locks.DayBusy as e:
        sys.exit(f"--resume: {e}")


def write(args: argparse.Namespace, week: list[str], warm_day: str, out: dict) -> None:
    done = [d for d in week if all(d in out[m] for m in MODES)]
    # a day re-run after a stop (--resume) found part of its describe/embed work in the caches: not in the clean mean
    # (and a full day run --ahead found an earlier day's caches)
    clean = [d for d in done[1:] if not any(out[m][d].get("resumed") or out[m][d].get("ahead") for m in MODES)]
    ratio = {d: out["incremental"][d]["wall_seconds"] / out["full"][d]["wall_seconds"] for d in done[1:]}
    mean = {k: round(sum(ratio[d] for d in over) / len(over), 4) if over else None
            for k, over in (("all", done[1:]), ("clean", clean))}
    last = done[-1]
    models = sorted(out["full"][last]["test_NDCG@10"])
    payload = {
        "days": week, "days_done": done, "warm_day": warm_day, "config": args.config, "overrides": args.sets,
        "full_every_days": args.full_every_days, "skipped_stages": args.skip_stages,
        "incremental_over_full_seconds": mean["all"],
        "incremental_over_full_seconds_clean": mean["clean"],
        "per_day_ratio": {d: round(r, 4) for d, r in ratio.items()},
        "ratio_days": clean,
        "day7_ndcg10": {m: {k: out[k][last]["test_NDCG@10"].get(m) for k in MODES} for m in models},
        "day7_is": last,
        "detail": out, "machine": machine(),
    }
    ran = [(d, m) for d in week for m in MODES if d in out[m]]  # a day one mode has done gets its row too
    stages = sorted({s for d, m in ran for s in out[m][d]["stages"]})
    rows = [("day", "mode", "wall s", *[f"{m} NDCG@10" for m in models], *[f"{s} s" for s in stages])]
    for ds, mode in ran:
        r = out[mode][ds]
        rows.append((ds, mode, f"{r['wall_seconds']:.0f}",
                     *[f"{r['test_NDCG@10'].get(m, float('nan')):.4f}" for m in models],
                     *[f"{(r['stages'].get(s) or {}).get('seconds') or 0:.0f}" for s in stages]))
    one_mode = ", ".join(f"{m} {d}" for d, m in ran if d not in done)
    notes = [f"days done: {len(done)} of {len(week)}{f' (and in one mode only: {one_mode})' if one_mode else ''}; "
             f"stages left out: {args.skip_stages or 'none'}",
             f"incremental / full wall time, mean over the days done after the first "
             f"({', '.join(done[1:]) or 'no day'}): {mean['all']}"
             + (f"; over those neither resumed nor run ahead ({', '.join(clean) or 'no day'}): {mean['clean']}"
                if len(clean) < len(done[1:]) else ""),
             f"caches (describe, embed) filled by one run of {warm_day} up to embed, copied into both homes",
             "test NDCG@10: full ranking over all items, user history excluded, leave-one-out of each day's data"]
    notes.append("code: " + ", ".join(sorted({out[m][d].get("commit", "not recorded") for d in done for m in MODES})))
    resumed = [f"{m} {d}" for d in done for m in MODES if out[m][d].get("resumed")]
    if resumed:
        notes.append(f"re-run from its start after the replay was stopped in it (--resume): {', '.join(resumed)}")
    ahead = [f"{d} (caches of {out['full'][d]['ahead']['caches_of']})" for d in done if out["full"][d].get("ahead")]
    if ahead:
        notes.append(f"full retrain run ahead of the days before it (--ahead), out of the clean mean: {', '.join(ahead)}")
    write_results(f"nightly_replay{args.suffix}", payload, rows, notes)


@dataclasses.dataclass
class Replay:
    """A replay under way: its settings, and ``out`` (mode -> day -> the day's record), saved after every run."""
    args: argparse.Namespace
    work: Path
    week: list[str]
    warm_day: str
    stages: str | None
    key: str
    out: dict

    def one(self, mode: str, ds: str, home: Path, extra: dict) -> bool:
        """Run (mode, ds) in ``home`` unless done; False when a stop file asks to stop before it."""
        work, out, args = self.work, self.out, self.args
        if ds in out[mode]:
            return True
        if (work / "stop").exists():  # a stop between two runs: nothing is half-done, nothing re-run on resume
            (work / "stop").unlink()
            print(f"stopped before {mode} {ds} ({work / 'stop'} was there); --resume goes on from it", flush=True)
            return False
        resumed = (home / "runs" / ds).exists()
        if resumed:
            clear_day(home, ds)
        sets = [*args.sets, f"refresh.mode={mode}", f"refresh.full_every_days={args.full_every_days}"]
        wall = run_day(home, ds, args.config, sets, work / "replay.log", stages=self.stages)
        out[mode][ds] = day_record(home, ds, wall) | {"commit": commit()} | extra | (
            {"resumed": True} if resumed else {})
        print(f"[{mode}] {ds}: {wall:.0f} s, test NDCG@10 {out[mode][ds]['test_NDCG@10']}", flush=True)
        write_json(work / "replay_state.json", {"key": self.key, "out": out})
        if all(ds in out[m] for m in MODES):
            write(args, self.week, self.warm_day, out)
        return True

    def ahead(self, day: str) -> bool:
        """``--ahead DAY``: the incremental days up to it, then its full retrain in a copy of the full home; False
        when a stop file stopped it."""
        week, work = self.week, self.work
        if day not in week:
            sys.exit(f"--ahead {day}: not a day of --from {self.args.start} --to {self.args.end}")
        for ds in week[:week.index(day) + 1]:  # the incremental days build on each other: in order
            if not self.one("incremental", ds, work / "incremental", {}):
                return False
        before = [d for d in week if d in self.out["full"]]
        ahead_home = work / "full-ahead"
        if not (ahead_home / "runs" / day).exists():  # a stopped ahead run goes on in its own copy
            shutil.rmtree(ahead_home, ignore_errors=True)
            shutil.copytree(work / "full", ahead_home, symlinks=True)
        return self.one("full", day, ahead_home, {"ahead": {"home": str(ahead_home),
                                                           "caches_of": before[-1] if before else self.warm_day}})


def start(args: argparse.Namespace, work: Path, key: str) -> dict:
    """The days done so far: a stopped replay's (``--resume``, same settings), else none, the replay homes cleared
    and their caches seeded from ``WORK/seed``."""
    state_file = work / "replay_state.json"
    if args.resume and not state_file.exists() and any((work / m / "runs").exists() for m in MODES):
        sys.exit(f"--resume: {work} holds replay homes but no {state_file.name} (written by a replay of an earlier "
                 "version, or removed); run without --resume to start afresh (this removes them)")
    if args.resume and state_file.exists():
        state = json.loads(state_file.read_text())
        if state["key"] != key:
            sys.exit(f"--resume: {state_file} was written by a replay with other settings (config, --set, days, "
                     f"--full-every-days or --skip-stages); run without --resume to start afresh, or with those")
        out = state["out"]
        print(f"resuming: done {', '.join(f'{m} {len(out[m])} days' for m in MODES)}", flush=True)
        return out
    state_file.unlink(missing_ok=True)  # a replay started afresh cannot be resumed from an older one's record
    shutil.rmtree(work / "full-ahead", ignore_errors=True)
    for mode in MODES:
        shutil.rmtree(work / mode, ignore_errors=True)
        seed_caches(work / "seed", work / mode)
    return {mode: {} for mode in MODES}


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__, shared=("config", "set", "suffix"))
    p.add_argument("--from", dest="start", required=True)
    p.add_argument("--to", dest="end", required=True)
    p.add_argument("--warm-day", default=None, help="the day whose run fills the shared caches (default: --from - 1)")
    p.add_argument("--work", default="/tmp/recpipe-replay")
    p.add_argument("--full-every-days", type=int, default=7)
    p.add_argument("--skip-stages", default="", help="comma-separated stages left out of every day (say why in "
                   "the results), e.g. train_llmrec on a CPU budget")
    p.add_argument("--resume", action="store_true", help="go on with a stopped replay in --work (same settings)")
    p.add_argument("--ahead", default=None, help="a day whose full retrain runs next (in a copy of the full home, "
                   "after the incremental days up to it), before the days in between; left out of the clean mean ratio")
    args = p.parse_args(argv)
    work = Path(args.work)
    week = days(args.start, args.end)
    warm_day = args.warm_day or (dt.date.fromisoformat(args.start) - dt.timedelta(1)).isoformat()
    work.mkdir(parents=True, exist_ok=True)
    if not (work / "seed" / "runs" / warm_day / "summary.json").exists():
        print(f"filling the caches with a run of {warm_day} up to embed ...", flush=True)
        run_day(work / "seed", warm_day, args.config, [*args.sets, "refresh.mode=full"], work / "replay.log",
                until="embed")
    skip = {x.strip() for x in args.skip_stages.split(",") if x.strip()}
    stages = ",".join(s.name for s in STAGES if s.name not in skip) if skip else None
    key = state_key(args, week, warm_day, stages)
    replay = Replay(args, work, week, warm_day, stages, key, start(args, work, key))
    (work / "stop").unlink(missing_ok=True)  # left by a stop that came after the last run: not meant for this one
    if args.ahead and args.ahead not in replay.out["full"] and not replay.ahead(args.ahead):
        return 0
    for ds in week:
        for mode in MODES:
            if not replay.one(mode, ds, work / mode, {}):
                return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
