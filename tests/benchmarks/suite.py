"""``make bench``: every benchmark that fits a 2-core machine in under an hour, one after the other.

    python tests/benchmarks/suite.py             # run those that fit, in the table's order
    python tests/benchmarks/suite.py --list      # every benchmark: command, expected minutes, why one is left out
    python tests/benchmarks/suite.py --only bench_wals_engines [--only ...]

``BENCHMARKS`` lists every script of ``tests/benchmarks`` with the command ``make bench`` runs, the minutes it is
expected to take on 2 cores and where that figure comes from (the wall seconds its results file records, or its
docstring), and, for those left out, why (hours of CPU, a CUDA GPU, finished runs to be given). A run stops at the
first benchmark that fails, naming it and the ones that did not run. Each benchmark rewrites its own
``results/<name>.{json,md}`` with the command it ran (the checked-in files may come from other options: their
``command`` says which). The Beauty benchmarks share ``/tmp/recpipe-bench-beauty``: ``bench_sequential`` comes
before ``bench_llmrec``, which scores its models.
"""
from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HOUR = 60.0


@dataclasses.dataclass(frozen=True)
class Benchmark:
    script: str              # tests/benchmarks/<script>
    args: tuple[str, ...]    # what make bench passes it
    minutes: float | None    # expected on 2 cores (None: nothing to run on its own)
    basis: str               # where the minutes come from
    left_out: str = ""       # why make bench does not run it ("" when the minutes fit)

    @property
    def name(self) -> str:
        return self.script.removesuffix(".py")

    @property
    def runs(self) -> bool:
        return not self.left_out and self.minutes is not None and self.minutes < HOUR

    @property
    def command(self) -> str:
        return " ".join(["python", f"tests/benchmarks/{self.script}", *self.args])


BENCHMARKS = (
    Benchmark("bench_wals_engines.py", (), 6, "results/wals_engines.json: Spark ALS fit 279 s, implicit 9 s, two "
              "full-ranking evaluations; the Beauty split about 1.5 min (beauty_sequential.json: ingest, validate, "
              "split 87 s)"),
    Benchmark("bench_sequential.py", (), 22, "results/beauty_sequential.json: wals + train_sequential + evaluate "
              "910 s, embed + neighbours 125 s, the split 87 s; 3 two-process epochs about 1 min (its "
              "--compare-text-source needs every item described first: hours, not run here)"),
    Benchmark("bench_describe.py", (), 25, "results/describe.json: 200 batched descriptions 107 s, the same one at "
              "a time 7,843 tokens at 12.2 tokens/s (640 s), encoding 12,101 items at 109/s and 22,363 users at 41/s "
              "(650 s), neighbours 32 s"),
    Benchmark("bench_engines.py", (), 33, "results/engines.json: the whole catalogue through CTranslate2 1,250 s, "
              "three engines on 200 items twice 315 s, encoding 12,101 items twice 160 s, conversions"),
    Benchmark("bench_llmrec.py", (), 36, "results/llmrec_beauty.json: the five variants' train_llmrec + evaluate "
              "2,057 s, after bench_sequential built the home (else about 20 min more for wals, embed, "
              "neighbours and train_sequential)"),
    Benchmark("bench_recbole.py", (), 16, "results/recbole_sasrec.json: RecBole 2,493 s for 9 epochs (3 here: "
              "about 830 s), recpipe's 3 epochs about 1 min; installs RecBole from PyPI the first time"),
    Benchmark("bench_serving.py", (), 10, "results/serving.json's run: about 7 min after the split (SASRec's 5 "
              "epochs 75 s, WALS, evaluate and register about a minute, two servers' load loops and the NDCG check), "
              "plus the Beauty split about 1.5 min when the home is new"),
    Benchmark("reliability.py", (), 6, "results/reliability.json: 343 s (the named tests of make test)"),
    Benchmark("heldout_movielens.py", ("--describe-cap", "50"), 17, "results/heldout_ml100k.json: the two configs "
              "474 s and 517 s with --describe-cap 50; downloads the recbole wheel (PyPI) the first time; the "
              "checked-in file also has --grasp-variant rows (about 4 min each), not run here"),
    Benchmark("bench_webrec.py", (), 85, "results/webrec_beauty.json: web_queries 2,796 s, the six variants "
              "1,582 s, two poisoned re-scorings and the keyword grid about 10 min",
              "over an hour on 2 cores (web_queries alone 47 min)"),
    Benchmark("baselines.py", ("--config", "pipelines/conf/amazon_beauty.yaml", "--set",
                               "data.path=../shared/datasets/amazon-beauty"), 150,
              "results/baselines.json: per seed SASRec 1,663-1,946 s, GRASP 415-655 s, GRASP[metadata] 554-741 s "
              "(training wall_seconds), 3 seeds, plus describing the items",
              "hours of CPU: 3 seeds of SASRec and two GRASPs trained to convergence"),
    Benchmark("sasrec_public.py", ("--config", "pipelines/conf/amazon_beauty.yaml", "--set",
                                   "data.path=../shared/datasets/amazon-beauty"), 170,
              "results/sasrec_public.json: ten candidates trained to convergence, 426-1,926 s each (train_seconds)",
              "hours of CPU: ten SASRec trainings to convergence"),
    Benchmark("nightly_replay.py", ("--config", "pipelines/conf/amazon_beauty.yaml", "--set",
                                    "data.path=../shared/datasets/amazon-beauty", "--from", "2014-07-01", "--to",
                                    "2014-07-07"), 341,
              "results/nightly_replay.json: the full-length week's 14 day runs sum to 20,460 s",
              "hours of CPU: a week of nightly runs, twice (its docstring: --resume across sessions)"),
    Benchmark("cold_items.py", ("--config", "pipelines/conf/amazon_beauty.yaml", "--set",
                                "data.path=../shared/datasets/amazon-beauty"), 150,
              "results/cold_items.json's run (SASRec only): prepare 550 s (embed 497 s), per seed train_sequential "
              "404-586 s and evaluate 115-125 s; GRASP adds about as much per seed",
              "hours of CPU: two cold_by values x 3 seeds of SASRec and GRASP"),
    Benchmark("new_items_replay.py", ("--config", "pipelines/conf/amazon_beauty.yaml", "--set",
                                      "data.path=../shared/datasets/amazon-beauty"), 50,
              "results/new_items_replay.json's run: night 0 (SASRec in full) 602 s (id) and 713 s (text), the 7 "
              "incremental nights 100-114 s each, the ranking 35 s; with --cache-from (else about 2 min more per home to "
              "embed)"),
    Benchmark("bench_scale.py", ("--scales", "1,3,10", "--compare-ce", "10"), None,
              "not yet run at 1x/3x/10x: a smoke run at 0.02x and 0.05x took 6 minutes, most of it describe's LLM "
              "load (once per scale) and embed",
              "not yet measured: the 10x shop (2 M interactions) through every stage, likely hours of CPU"),
    Benchmark("grasp_tuning.py", ("LABEL=HOME:MODEL", "..."), None, "scores the valid phase of finished runs only "
              "(a minute or two each)", "not standalone: needs finished train_sequential runs given as "
              "LABEL=HOME:MODEL"),
    Benchmark("gpu_sequential.py", ("pack|train|report", "..."), None, "its docstring: pack here, train on a GPU "
              "node, report here", "needs a CUDA GPU (train runs on the GPU node)"),
    Benchmark("gpu_llmrec.py", ("pack|train|report", "..."), None, "its docstring: about 500 s of H200 after the "
              "backbone's conversion", "needs a CUDA GPU (train runs on the GPU node)"),
)


def listing() -> str:
    """Every benchmark: whether make bench runs it, its expected minutes on 2 cores, its command, the basis of the
    minutes and, for the others, why they are left out."""
    rows = ["| benchmark | make bench | minutes (2 cores) | command | minutes from | left out because |",
            "|---|---|---|---|---|---|"]
    for b in BENCHMARKS:
        rows.append(f"| {b.name} | {'yes' if b.runs else 'no'} | {'-' if b.minutes is None else f'{b.minutes:g}'} | "
                    f"`{b.command}` | {b.basis} | {b.left_out or '-'} |")
    total = sum(b.minutes for b in BENCHMARKS if b.runs)
    return "\n".join(rows) + f"\n\nmake bench runs {sum(b.runs for b in BENCHMARKS)} of {len(BENCHMARKS)}, about " \
        f"{total:g} minutes in all on 2 cores (each under an hour)."


def run(chosen: list[Benchmark]) -> int:
    """The benchmarks one after the other; the first failure stops the run with a message naming it."""
    t_all = time.perf_counter()
    for i, b in enumerate(chosen):
        print(f"== {b.name} ({i + 1} of {len(chosen)}, about {b.minutes:g} min): {b.command}", flush=True)
        t0 = time.perf_counter()
        code = subprocess.run([sys.executable, f"tests/benchmarks/{b.script}", *b.args], cwd=ROOT).returncode
        minutes = (time.perf_counter() - t0) / 60
        if code:
            rest = ", ".join(x.name for x in chosen[i + 1:]) or "none"
            print(f"make bench: {b.name} failed (exit {code}) after {minutes:.1f} min: `{b.command}`; its output is "
                  f"above; not run: {rest}", file=sys.stderr, flush=True)
            return code
        print(f"== {b.name}: done in {minutes:.1f} min", flush=True)
    print(f"make bench: {len(chosen)} benchmarks done in {(time.perf_counter() - t_all) / 60:.1f} min", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--list", action="store_true", help="print every benchmark and why some are left out")
    p.add_argument("--only", action="append", default=[], metavar="NAME", help="run only these (repeatable; any "
                   "benchmark of the table that needs no GPU or arguments)")
    args = p.parse_args(argv)
    if args.list:
        print(listing())
        return 0
    by_name = {b.name: b for b in BENCHMARKS}
    if unknown := [n for n in args.only if n.removesuffix(".py") not in by_name]:
        sys.exit(f"--only: unknown {unknown}; known: {', '.join(by_name)}")
    only = [by_name[n.removesuffix(".py")] for n in args.only]
    if bad := [b.name for b in only if b.minutes is None]:
        sys.exit(f"--only: {', '.join(bad)} cannot run here: {'; '.join(by_name[n].left_out for n in bad)}")
    if not only:
        print("left out (python tests/benchmarks/suite.py --list says more): " + "; ".join(
            f"{b.name}: {b.left_out}" for b in BENCHMARKS if not b.runs), flush=True)
    return run(only or [b for b in BENCHMARKS if b.runs])


if __name__ == "__main__":
    sys.exit(main())
