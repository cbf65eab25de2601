"""The benchmarks' harness (``tests/benchmarks/common.py``): shared arguments, the variant table runner, paired
intervals over seeds, the results writer; ``baselines.py`` on fake runs; and every benchmark's functions short."""
from __future__ import annotations

import ast
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from pipelines.evaluation.stats import ndcg_at
from tests.benchmarks import baselines, common

BENCHMARKS = Path(common.__file__).resolve().parent
LIMIT = 60


def test_the_shared_parser_parses_the_shared_arguments_with_the_scripts_defaults():
    p = common.parser("Title line.\n\nmore", home="/tmp/h", seeds="1,2")
    a = p.parse_args(["--set", "a=1", "--set", "b=2", "--config", "c.yaml", "--suffix", "_x", "--skip-prepare"])
    assert (a.sets, a.config, a.home, a.seeds, a.suffix, a.skip_prepare) == (["a=1", "b=2"], "c.yaml", "/tmp/h",
                                                                            [1, 2], "_x", True)
    assert p.description == "Title line."
    assert p.parse_args(["--seeds", "44,42"]).seeds == [44, 42]
    for bad in ("4a", "42,42", ""):
        with pytest.raises(SystemExit):
            p.parse_args(["--seeds", bad])
    only = common.parser("t", shared=("home", "data"))
    assert vars(only.parse_args([])) == {"home": "/tmp/recpipe-bench-beauty", "data": str(common.BEAUTY_DATA)}
    with pytest.raises(TypeError, match="not a shared argument"):
        common.parser("t", homes="/x")
    with pytest.raises(TypeError, match="not asked for"):
        common.parser("t", shared=("home",), seeds="1")


def test_variants_run_in_the_tables_order_with_the_reference_first_whatever_order_they_were_given():
    table = {"ref": 1, "a": 2, "b": 3}
    calls = []

    def run(seed, label, spec):
        calls.append((seed, label))
        return seed * 10 + spec

    out = common.run_variants([7, 8], table, ["b", "ref", "a"], run, reference="ref")
    assert list(out) == ["ref", "a", "b"] and out == {"ref": [71, 81], "a": [72, 82], "b": [73, 83]}
    assert calls == [(7, "ref"), (7, "a"), (7, "b"), (8, "ref"), (8, "a"), (8, "b")]
    assert common.run_variants([7, 8], table, ["a", "ref", "b"], run, reference="ref") == out
    with pytest.raises(SystemExit, match="required"):
        common.variant_order(table, ["a"], "ref")
    with pytest.raises(SystemExit, match="known: ref, a, b"):
        common.variant_order(table, ["ref", "c"], "ref")


def test_paired_interval_is_the_t_interval_of_the_per_seed_deltas_and_names_its_method():
    iv = common.paired_interval([0.05, 0.06, 0.07], [0.04, 0.04, 0.04])       # deltas 0.01, 0.02, 0.03
    assert iv["per_seed_deltas"] == pytest.approx([0.01, 0.02, 0.03]) and iv["delta"] == pytest.approx(0.02)
    half = 4.302652729911275 * 0.01 / np.sqrt(3)
    assert iv["ci95"] == pytest.approx([0.02 - half, 0.02 + half])
    assert iv["method"] == "t over per-seed paired deltas" and iv["verdict"] == "not distinguishable"
    assert common.paired_interval([0.05, 0.051], [0.04, 0.04])["verdict"] == "better"
    diffs = [np.full(20, -0.01), np.full(30, -0.02), np.full(10, -0.015)]
    two = common.paired_interval_from_deltas(diffs, "two-level", resamples=300)
    assert two["method"] == "two-level bootstrap (seeds, then users)" and two["verdict"] == "worse"
    assert two["per_seed_deltas"] == pytest.approx([-0.01, -0.02, -0.015])
    with pytest.raises(ValueError, match="per-user differences"):
        common.paired_interval([0.1, 0.2], [0.1, 0.1], "two-level")
    with pytest.raises(ValueError, match="at least 2 seeds"):
        common.paired_interval([0.1], [0.1])
    assert common.interval_record("t", reference="SASRec")["method"] == common.INTERVALS["t"]


def test_write_results_stores_the_mds_table_and_notes_and_the_meta_in_the_json(tmp_path, monkeypatch):
    monkeypatch.setattr(common, "RESULTS", tmp_path)
    monkeypatch.setattr(common, "commit", lambda: "abc1234")
    m = {"cores": 2, "memory_gib": 8, "platform": "Linux", "python": "3.11", "date": "2026-12-01T00:00:00+00:00",
         "command": "python x.py --seeds 1,2"}
    payload = {"dataset": "toy", "protocol": "loo", "seeds": [1, 2], "machine": m, "figure": 0.5}
    common.write_results("toy", payload, [("a", "b"), ("1", "2"), ("3", "4")], ["note one"], tail=["## more", "x"])
    got = json.loads((tmp_path / "toy.json").read_text())
    assert got["figure"] == 0.5 and "report" not in payload                 # the caller's payload stays as it was
    assert got["report"] == {"columns": ["a", "b"], "rows": [["1", "2"], ["3", "4"]], "notes": ["note one"]}
    assert got["meta"] == {"dataset": "toy", "protocol": "loo", "seeds": [1, 2], "command": "python x.py --seeds 1,2",
                           "commit": "abc1234", "date": "2026-12-01T00:00:00+00:00",
                           "machine": "2 cores, 8 GiB, Linux, Python 3.11"}
    md = (tmp_path / "toy.md").read_text()
    assert "| a | b |\n|---|---|\n| 1 | 2 |\n| 3 | 4 |\n\n- note one\n\n## more\nx\n" in md
    # a single seed under _meta; meta given by the caller (a re-render keeps the run's own) wins
    common.write_results("one", {"_meta": {"seed": 42, "dataset": "d"}, "machine": m}, [("a",), ("1",)], [],
                         meta={"commit": "run1234"})
    meta = json.loads((tmp_path / "one.json").read_text())["meta"]
    assert meta["seeds"] == [42] and meta["dataset"] == "d" and meta["protocol"] is None and meta["commit"] == "run1234"
    # a re-rendered file (report and meta already in it, a key added after them) keeps them last; text as written
    common.write_results("toy", {**got, "interval": {"method": "t"}}, [("a",), ("0.1 ± 0.2",)], ["n"])
    text = (tmp_path / "toy.json").read_text(encoding="utf-8")
    assert list(json.loads(text))[-3:] == ["interval", "report", "meta"] and "0.1 ± 0.2" in text


# ----------------------------------------------------------------------------- baselines.py on fake runs

def fake_run(seed: int, label: str, users: int = 60) -> dict:
    """One (seed, variant) as ``baselines.train_one`` returns it: ranks of ``users`` users and metrics that agree
    with them (every figure the headline reads)."""
    rng = np.random.default_rng(seed * 1000 + sum(map(ord, label)))
    u = np.arange(users)
    ranks = rng.integers(0, 25, users)
    short, tail = u % 3 == 0, u % 2 == 0
    nd = lambda m: float(ndcg_at(ranks[m]).mean())  # noqa: E731
    full = {"NDCG@10": nd(u >= 0), "HR@10": float((ranks < 10).mean()), "NDCG@20": 0.1, "HR@20": 0.2, "MRR": 0.05,
            "users": users}
    m = {"full": full, "sampled100": {"NDCG@10": 0.3}, "valid": {"full": {"NDCG@10": full["NDCG@10"] + 0.01}},
         "slices": {"short_history": {"full": {"NDCG@10": nd(short)}}, "tail_items": {"full": {"NDCG@10": nd(tail)}}}}
    return {"ranks": {"users": u, "full": ranks, "short_history": short, "tail_items": tail}, "metrics": m,
            "references": {"wals": m}, "training": {"epoch_seconds": 1.0 + seed % 2, "seconds_to_best": 5.0,
                                                    "best_epoch": 3, "wall_seconds": 9.0, "commit": "abc1234"}}


def baselines_payload(tmp_path, monkeypatch, variants: str, users: dict[str, int] | None = None) -> tuple[dict, list]:
    written = {}
    monkeypatch.setattr(baselines, "train_one", lambda args, seed, label, spec: fake_run(
        seed, label, (users or {}).get(label, 60)))
    monkeypatch.setattr(baselines, "load_config", lambda config, sets: SimpleNamespace(
        dataset="toy", eval=SimpleNamespace(users=0, negatives_seed=7, users_seed=0)))
    monkeypatch.setattr(baselines, "machine", lambda: {"command": "x", "date": "d"})
    monkeypatch.setattr(baselines, "write_results", lambda name, payload, rows, notes: written.update(
        payload=payload, notes=notes))
    assert baselines.main(["--home", str(tmp_path), "--skip-prepare", "--seeds", "42,43,44", "--variants", variants,
                           "--bootstrap", "200"]) == 0
    return written["payload"], written["notes"]


def test_baselines_payload_does_not_depend_on_the_order_of_variants(tmp_path, monkeypatch):
    one, notes = baselines_payload(tmp_path, monkeypatch, "grasp,sasrec,grasp[metadata]")
    other, _ = baselines_payload(tmp_path, monkeypatch, "grasp[metadata],grasp,sasrec")
    assert json.dumps(one, sort_keys=True, default=str) == json.dumps(other, sort_keys=True, default=str)
    assert list(one["models"]) == ["sasrec", "grasp", "grasp[metadata]"]
    g, s = one["models"]["grasp"], one["models"]["sasrec"]
    # the delta and the means are over the same users: each per-seed delta is the difference of the per-seed means
    assert g["delta_vs_sasrec_per_seed"] == pytest.approx(np.subtract(g["NDCG@10_per_seed"], s["NDCG@10_per_seed"]))
    assert g["delta_vs_sasrec"] == pytest.approx(g["NDCG@10_mean"] - s["NDCG@10_mean"])
    assert g["short_history_delta_vs_sasrec_per_seed"] == pytest.approx(
        np.subtract(g["short_history_NDCG@10_per_seed"], s["short_history_NDCG@10_per_seed"]))
    assert one["interval"]["method"] == "t over per-seed paired deltas"
    assert g["paired_users"] == 60 and "users_differ" not in g
    assert len(g["delta_vs_sasrec_ci95_users_only"]) == 2
    assert any("t over per-seed paired deltas" in n and "users alone" in n for n in notes)


def test_baselines_say_when_the_delta_pairs_other_users_than_the_means(tmp_path, monkeypatch):
    payload, notes = baselines_payload(tmp_path, monkeypatch, "sasrec,grasp", users={"grasp": 40})
    g = payload["models"]["grasp"]
    assert g["paired_users"] == 40 and "40 users every run scored" in g["users_differ"]
    assert any(n.startswith("grasp: the deltas pair the 40 users") for n in notes)


def test_baselines_provenance_of_user_neighbours_says_test_then_valid():
    chosen_on, source = baselines.PROVENANCE["train_sequential.grasp.user_neighbours"]
    assert "test" in chosen_on and "valid" in chosen_on and "results/grasp_user_neighbours.md" in source
    assert "beauty_sequential_gpu" not in source


# ----------------------------------------------------------------------------- every benchmark's functions short

def function_lengths() -> dict[str, int]:
    out = {}
    for path in sorted(BENCHMARKS.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                out[f"{path.name}:{node.name}:{node.lineno}"] = node.end_lineno - node.lineno + 1
    return out


def test_every_benchmark_main_is_at_most_60_lines():
    lengths = function_lengths()
    assert any(k.startswith("baselines.py:main:") for k in lengths)
    assert {k: n for k, n in lengths.items() if k.split(":")[1] == "main" and n > LIMIT} == {}


def test_every_benchmark_function_is_at_most_60_lines():
    assert {k: n for k, n in function_lengths().items() if n > LIMIT} == {}


def test_the_suite_lists_every_benchmark_and_stops_at_the_first_failure_naming_it(monkeypatch, capsys):
    from tests.benchmarks import suite

    scripts = {p.name for p in BENCHMARKS.glob("*.py")} - {"__init__.py", "common.py", "suite.py", "results_doc.py"}
    assert {b.script for b in suite.BENCHMARKS} == scripts        # a new benchmark needs its row
    assert all(b.basis for b in suite.BENCHMARKS) and all(b.runs or b.left_out for b in suite.BENCHMARKS)
    assert all(b.minutes < 60 for b in suite.BENCHMARKS if b.runs)
    assert suite.main(["--list"]) == 0
    listing = capsys.readouterr().out
    assert "| gpu_llmrec | no | - |" in listing and "needs a CUDA GPU" in listing and "hours of CPU" in listing
    ran = []

    def fake_run(cmd, cwd):
        ran.append(Path(cmd[1]).stem)
        return SimpleNamespace(returncode=3 if ran[-1] == "bench_describe" else 0)

    monkeypatch.setattr(suite.subprocess, "run", fake_run)
    assert suite.main([]) == 3
    assert ran == ["bench_wals_engines", "bench_sequential", "bench_describe"]
    err = capsys.readouterr().err
    assert "bench_describe failed (exit 3)" in err and "not run: bench_engines, bench_llmrec" in err
    ran.clear()
    assert suite.main(["--only", "reliability", "--only", "bench_webrec.py"]) == 0 and ran == ["reliability",
                                                                                               "bench_webrec"]
    with pytest.raises(SystemExit, match="needs a CUDA GPU"):
        suite.main(["--only", "gpu_llmrec"])


def test_the_benchmark_scripts_import_and_parse_their_help(monkeypatch, capsys):
    for path in sorted(BENCHMARKS.glob("*.py")):
        if path.name in ("__init__.py", "common.py", "results_doc.py"):
            continue
        module = __import__(f"tests.benchmarks.{path.stem}", fromlist=["main"])
        monkeypatch.setattr(sys, "argv", [path.name, "--help"])
        with pytest.raises(SystemExit) as e:
            module.main(["--help"]) if "argv" in module.main.__code__.co_varnames else module.main()
        assert e.value.code == 0, path.name
