"""pipelines.runner: one real stage (neighbours, on a hand-written text_embeddings table) through run_stage:
its record, its outputs and the summary; a failing stage's record and the error it raises."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from jobs import warehouse
from pipelines import runner
from pipelines.config import load_config
from pipelines.context import StageContext

DS = "2026-01-01"


def _embeddings(home) -> None:
    vec = np.array([[1, 0], [0.8, 0.6], [0, 1], [-0.6, 0.8]], np.float32)  # items 1..4, unit vectors, no ties
    warehouse.write_arrow(pa.table({
        "kind": ["item"] * 4, "source": ["metadata"] * 4, "id": ["a", "b", "c", "d"],
        "idx": pa.array([1, 2, 3, 4], pa.int32()), "fallback": [False] * 4, "text_hash": ["h"] * 4,
        "vector": pa.array(list(vec), pa.list_(pa.float32()))}), home, "text_embeddings", DS)


def test_run_stage_records_outputs_and_rebuilds_the_summary(tmp_path):
    _embeddings(tmp_path)
    ctx = StageContext(load_config(None, ["neighbours.k=2"]), DS, tmp_path)
    rec = runner.run_stage("neighbours", ctx)
    assert rec["status"] == "success" and rec["rows_out"] == 8 and rec["tables"] == {"neighbours": 8}
    assert rec["outputs"] == {"neighbours": str(tmp_path / "warehouse" / "neighbours" / f"ds={DS}")}
    assert (rec["k"], rec["engine"]) == (2, "exact")
    nb = warehouse.read_arrow(tmp_path, "neighbours", DS).sort_by([("idx", "ascending"), ("rank", "ascending")])
    assert nb.column("neighbour_id").to_pylist() == ["b", "c", "a", "c", "d", "b", "c", "b"]
    assert json.loads((ctx.run_dir / "stages" / "neighbours.json").read_text()) == rec
    summary = json.loads((ctx.run_dir / "summary.json").read_text())
    assert summary["status"] == "partial" and summary["tables"] == {"neighbours": 8}
    assert set(summary["stages"]["neighbours"]) == {"status", "seconds", "rows_out", "k", "engine", "seconds_by_block",
                                                  "refresh"}
    assert summary["stages"]["neighbours"]["refresh"]["recomputed"] == "all"


def test_a_failing_stage_is_recorded_and_raised_with_its_name(tmp_path):
    ctx = StageContext(load_config(), DS, tmp_path)
    with pytest.raises(runner.StageFailed, match=r"stage 'neighbours' failed for ds=2026-01-01: table "
                                                 r"'text_embeddings' has no partition") as err:
        runner.run_stage("neighbours", ctx)
    assert isinstance(err.value.cause, FileNotFoundError)
    rec = json.loads((ctx.run_dir / "stages" / "neighbours.json").read_text())
    assert rec["status"] == "failed" and rec["error"].startswith("FileNotFoundError: table 'text_embeddings'")
    assert "Traceback" in rec["traceback"]
    summary = json.loads((ctx.run_dir / "summary.json").read_text())
    assert (summary["status"], summary["failed_stage"]) == ("failed", "neighbours")
    with pytest.raises(ValueError, match="unknown stage 'nope'"):
        runner.run_stage("nope", ctx)


def test_a_launcher_that_cannot_start_fails_the_task_naming_the_setting(tmp_path):
    from pipelines import runner

    with pytest.raises(runner.StageFailed, match=r"launcher 'no-such-launcher-5e1' was not found.*"
                                                 r"train_sequential's distributed.launcher"):
        runner.run_task("train_sequential", "2026-01-01", None,
                        ["train_sequential.distributed.launcher=no-such-launcher-5e1 --num_gpus 8"], str(tmp_path))


def test_a_launcher_that_exits_without_a_record_fails_the_task(tmp_path):
    """``/bin/false`` stands for a launcher whose ranks died before rank 0 recorded anything."""
    from pipelines import runner

    with pytest.raises(runner.StageFailed, match=r"the launcher ./bin/false. exited with 1 and rank 0 recorded no result"):
        runner.run_task("train_llmrec", "2026-01-01", None, ["llmrec.distributed.launcher=/bin/false"], str(tmp_path))
