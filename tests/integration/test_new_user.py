"""recpipe as a new user runs it: the venv's binary from any folder, without an activated venv (as cron or an
Airflow worker calls it)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from jobs import warehouse

CONF = Path(__file__).resolve().parents[2] / "pipelines" / "conf" / "amazon_beauty.yaml"

pytestmark = pytest.mark.slow


def sequence_dataset(folder: Path, title, attributes) -> Path:
    """60 users x 6 items over 40 items in the sequence-file layout; ``title(i)``, ``attributes(i)`` per item."""
    folder.mkdir()
    (folder / "sequences.txt").write_text("".join(
        f"{u} " + " ".join(str(1 + (u * 7 + k) % 40) for k in range(6)) + "\n" for u in range(1, 61)))
    (folder / "items.tsv").write_text("item_id\tasin\ttitle\tattributes\n" + "".join(
        f"{i}\tA{i}\t{title(i)}\t{attributes(i)}\n" for i in range(1, 41)))
    return folder


def test_the_venv_binary_runs_spark_stages_from_another_folder_without_the_venv_on_path(tmp_path):
    binary = Path(sys.executable).parent / "recpipe"
    if not binary.exists():
        pytest.skip("recpipe is not installed as a console script in this environment")
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYSPARK_PYTHON",
                                                            "PYSPARK_DRIVER_PYTHON")}
    env["PATH"] = "/usr/bin:/bin"  # the first python3 there does not have recpipe's packages
    # a small dataset in the sequence-file layout: its parser runs in Spark's Python workers
    data = sequence_dataset(tmp_path / "data", lambda i: f"Item {i}", lambda i: f"Brand|Cat{i % 4}")
    home = tmp_path / "home"
    proc = subprocess.run([str(binary), "run", "--ds", "2026-01-01", "--home", str(home), "--stages",
                           "ingest", "--config", str(CONF), "--set", f"data.path={data}"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert warehouse.partition_path(home, "interactions", "2026-01-01", zone="staging").exists()


def test_describe_switched_off_leaves_embed_on_metadata_text(synthetic_home):
    """`describe.entities=[]`: no LLM is loaded or called, and embed uses every entity's metadata text."""
    from pipelines import runner
    from pipelines.config import load_config
    from pipelines.context import StageContext

    ctx = StageContext(load_config(None, ["describe.entities=[]", "describe.model_path=/nonexistent/llm",
                                          "embed.sources=[descriptions]"]), "2026-01-01", synthetic_home)
    out = runner.run_stage("describe", ctx)
    assert out["generated"] == 0 and out["llm_calls"] == 0 and out["rows_out"] == 0
    emb = runner.run_stage("embed", ctx)
    n = (warehouse.read_arrow(synthetic_home, "item_map", "2026-01-01").num_rows
         + warehouse.read_arrow(synthetic_home, "user_map", "2026-01-01").num_rows)
    assert emb["fallback"] == {"descriptions": n}


def test_the_generic_config_names_the_dataset_by_its_folder_and_warns_of_untitled_items(tmp_path):
    """A second dataset run with the Beauty config was labelled amazon-beauty and 22 untitled items passed without a
    word (reliability issue, 7). ``sequences.yaml`` carries no Beauty values but SASRec's training recipe, the one
    shown to travel to MovieLens-100k (issue 39): the folder names the dataset, and validation warns (without
    failing) about items that have no title."""
    import json

    from pipelines import cli

    data = sequence_dataset(tmp_path / "tiny-music", lambda i: "" if i in (3, 9) else f"Artist {i}",
                            lambda i: "folk|acoustic")
    home = tmp_path / "home"
    conf = CONF.with_name("sequences.yaml")
    rc = cli.main(["run", "--ds", "2026-01-01", "--home", str(home), "--until", "validate", "--config", str(conf),
                   "--set", f"data.path={data}", "--set", "validate.min_interactions=10", "--set",
                   "validate.min_items=5"])
    assert rc == 0
    summary = json.loads((home / "runs" / "2026-01-01" / "summary.json").read_text())
    assert summary["dataset"] == "tiny-music"
    warned = json.loads((home / "runs" / "2026-01-01" / "validation.json").read_text())["warnings"]
    assert len(warned) == 1 and warned[0].startswith("2 item(s) have no title, e.g. ['3', '9']"), warned
    from pipelines.config import Config, load_config

    generic, beauty, code = load_config(conf, [f"data.path={data}"]), load_config(CONF), Config()
    assert all(line.lstrip().startswith("#") for line in conf.read_text().lower().splitlines() if "beauty" in line)
    assert generic.train_sequential.per_model["sasrec"] == beauty.train_sequential.per_model["sasrec"]  # the recipe
    for section in ("wals", "split", "eval"):                                   # nothing else Beauty chose
        assert getattr(generic, section) == getattr(code, section), section
    assert (generic.train_sequential.sasrec, generic.train_sequential.grasp) == (code.train_sequential.sasrec,
                                                                                code.train_sequential.grasp)
