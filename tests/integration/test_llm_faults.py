"""describe against an OpenAI-compatible server that misbehaves (a local server on 127.0.0.1): answers that are not
chat completions, a 401 that echoes the API key, every call failing, and the same model moved to another port."""
from __future__ import annotations

import json
import sqlite3
import subprocess
import sys

import pytest

from pipelines import runner
from pipelines.config import load_config
from pipelines.context import StageContext
from tests.conftest import DS
from tests.llm_server import Behaviour, LocalLLMServer

pytestmark = pytest.mark.slow

SECRET = "sk-secret-marker-7f3a9c"


def ctx_for(home, server, *overrides) -> StageContext:
    return StageContext(load_config(None, ["describe.backend=openai", f"describe.openai.base_url={server.base_url}",
                                           "describe.openai.model=m", "describe.openai.max_retries=1",
                                           "describe.openai.backoff_s=0.01", "describe.openai.concurrency=2",
                                           "describe.entities=[items]", *overrides]), DS, home)


def cached(home) -> int:
    db = home / "cache" / "describe.sqlite"
    if not db.exists():
        return 0
    with sqlite3.connect(db) as con:
        return con.execute("SELECT COUNT(*) FROM entries").fetchone()[0]


@pytest.mark.parametrize("body,what", [("<html>502 Bad Gateway</html>", "not a chat completion"),
                                       ('{"id": "x", "object": "error"}', "not a chat completion")])
def test_answers_that_are_not_chat_completions_are_failed_calls_naming_the_server(synthetic_home, body, what):
    with LocalLLMServer(Behaviour(raw_body=body, ok_first=6)) as server:
        ctx = ctx_for(synthetic_home, server, "describe.max_items=20")
        with pytest.raises(runner.StageFailed) as err:
            runner.run_stage("describe", ctx)
    msg = str(err.value)
    assert what in msg and server.base_url in msg and body[:20] in msg, msg
    assert "JSONDecodeError" not in msg and "KeyError" not in msg and "registered" not in msg
    # the six good answers were committed before the run failed, and the message says so truthfully
    assert cached(synthetic_home) == 6 and "6 generated in this run are cached" in msg
    rec = json.loads((ctx.run_dir / "stages" / "describe.json").read_text())
    assert rec["status"] == "failed"


def test_a_401_that_echoes_the_key_leaves_it_nowhere(synthetic_home, monkeypatch):
    monkeypatch.setenv("RECPIPE_LLM_API_KEY", SECRET)
    with LocalLLMServer(Behaviour(echo_key=True)) as server:
        args = [sys.executable, "-m", "pipelines.cli", "stage", "describe", "--home", str(synthetic_home), "--ds", DS]
        for o in ["describe.backend=openai", f"describe.openai.base_url={server.base_url}",
                  "describe.openai.model=m", "describe.max_items=4", "describe.entities=[items]"]:
            args += ["--set", o]
        proc = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "401" in proc.stderr and "[REDACTED]" in proc.stderr
    assert SECRET not in proc.stdout + proc.stderr
    leaked = [p for p in synthetic_home.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]
    assert not leaked, leaked


def test_stops_calling_once_the_failure_budget_is_spent(synthetic_home):
    with LocalLLMServer(Behaviour(status_always=500)) as server:
        ctx = ctx_for(synthetic_home, server, "describe.max_items=40", "describe.max_failed_fraction=0.05")
        with pytest.raises(runner.StageFailed, match="stopped early"):
            runner.run_stage("describe", ctx)
    # 40 prompts x 2 attempts would be 80 requests; the budget (2 failures) is spent after the first three calls
    # end, with at most the two in flight finishing
    assert server.behaviour.requests <= 5 * 2, server.behaviour.requests


def test_the_same_model_on_another_port_reuses_the_cache(synthetic_home):
    with LocalLLMServer() as a:
        first = runner.run_stage("describe", ctx_for(synthetic_home, a, "describe.max_items=8"))
    with LocalLLMServer() as b:
        assert a.base_url != b.base_url
        again = runner.run_stage("describe", ctx_for(synthetic_home, b, "describe.max_items=8"))
        assert b.behaviour.requests == 0
    assert first["generated"] == 8 and again["generated"] == 0 and again["cached"] == 8


def test_a_slow_caller_that_stops_leaves_only_the_requests_in_flight():
    """The server may answer far faster than the caller consumes (a loaded CI machine): prompts are sent only as
    answers are taken, so stopping after three answers leaves at most ``concurrency`` more requests behind."""
    import time

    from pipelines.backends.llm import OpenAIBackend

    with LocalLLMServer(Behaviour(status_always=500)) as server:
        backend = OpenAIBackend(server.base_url, "m", concurrency=2, max_retries=0, backoff_s=0.01)
        stream = backend.stream([[{"role": "user", "content": f"p{i}"}] for i in range(40)])
        for n, (_, gen) in enumerate(stream, 1):
            assert gen.error
            time.sleep(0.3)  # the server has long answered everything it was sent
            if n == 3:
                break
        stream.close()
        assert server.behaviour.requests <= 3 + 2, server.behaviour.requests
