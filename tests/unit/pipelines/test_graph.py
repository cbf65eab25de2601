"""pipelines.graph: the one stage table, its checks and stage selection."""
from __future__ import annotations

from pathlib import Path

import pytest

from pipelines import graph
from pipelines.graph import ORDER, STAGES, Stage, check, select

STAGES_DIR = Path(graph.__file__).with_name("stages")


def test_the_table_in_run_order():
    """What holds however many stages are added: data first, evaluation after every model, registration last."""
    by = graph.BY_NAME
    assert ORDER[:3] == ("ingest", "validate", "split") and ORDER[-2:] == ("evaluate", "register")
    assert by["validate"].upstream == ("ingest",) and by["split"].upstream == ("validate",)
    assert by["register"].upstream == ("evaluate",)
    assert {"wals", *(s.name for s in STAGES if s.models)} <= set(by["evaluate"].upstream)
    assert by["train_sequential"].models == ("sasrec", "grasp") and by["train_sequential"].distributed
    assert by["train_sequential"].pool == "recpipe_train"
    assert by["describe"].pool == by["embed"].pool == "recpipe_llm"
    assert [(sec.conn_id, sec.env) for sec in by["describe"].secrets] == [("recpipe_llm", "RECPIPE_LLM_API_KEY")]
    assert all(s.pool == graph.DEFAULT_POOL for s in STAGES if s.name in ("ingest", "validate", "split", "evaluate"))


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
