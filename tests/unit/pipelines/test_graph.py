"""pipelines.graph: the one stage table, its checks and stage selection."""
from __future__ import annotations

from pathlib import Path

import pytest

from pipelines import graph
from pipelines.graph import ORDER, STAGES, Stage, check, select

STAGES_DIR = Path(graph.__file__).with_name("stages")


def test_the_table_in_run_order():
    assert ORDER == ("ingest", "validate", "split", "wals", "describe", "embed", "neighbours", "train_sequential",
                     "evaluate", "register")
    assert {s.name: s.upstream for s in STAGES}["evaluate"] == ("wals", "train_sequential")
    assert [s.name for s in STAGES if s.distributed] == ["train_sequential"]
    assert {s.name: s.pool for s in STAGES if s.pool != graph.DEFAULT_POOL} == {
        "describe": "recpipe_llm", "embed": "recpipe_llm", "train_sequential": "recpipe_train"}
    assert [(s.name, sec.conn_id, sec.env) for s in STAGES for sec in s.secrets] == [
        ("describe", "recpipe_llm", "RECPIPE_LLM_API_KEY")]


def test_every_stage_is_one_module_and_every_module_a_stage():
    modules = sorted(p.stem for p in STAGES_DIR.glob("*.py") if p.stem != "__init__")
    assert modules == sorted(ORDER)
    assert all(s.module == f"pipelines.stages.{s.name}" for s in STAGES)


def test_check_rejects_duplicates_and_upstream_listed_later():
    check()  # the shipped table
    with pytest.raises(ValueError, match="stage 'a' is listed twice"):
        check((Stage("a"), Stage("a")))
    with pytest.raises(ValueError, match=r"stage 'a' has upstream \['b'\] that is not listed before it"):
        check((Stage("a", ("b",)), Stage("b")))


def test_select():
    assert select() == list(ORDER)
    assert select(until="split") == ["ingest", "validate", "split"]
    assert select(stages="evaluate, wals") == ["wals", "evaluate"]          # pipeline order, spaces ignored
    with pytest.raises(ValueError, match="either --until or --stages"):
        select(until="split", stages="wals")
    with pytest.raises(ValueError, match=r"unknown stage\(s\) \['train_grasp'\]; stages are \['ingest'"):
        select(stages="wals,train_grasp")
    with pytest.raises(ValueError, match="unknown stage 'nope'"):
        select(until="nope")
