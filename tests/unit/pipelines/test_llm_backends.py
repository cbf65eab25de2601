"""The two generation backends: batched transformers generation against one-at-a-time generation (tiny model),
and the OpenAI-compatible client against a real HTTP server on 127.0.0.1 with 429s, 503s and timeouts."""
from __future__ import annotations

import pytest

from features import text as T
from pipelines.backends.llm import OpenAIBackend, TransformersBackend
from tests.llm_server import Behaviour, LocalLLMServer

PROMPTS = [T.item_messages({"title": f"item {i} " + "long title words " * (i % 4), "price": 3.0 + i})
           for i in range(9)]


def test_batched_generation_equals_one_at_a_time(tiny_llm_dir):
    """Length-sorted, left-padded batches must give each prompt exactly what it gets alone, in its own slot."""
    batched = TransformersBackend(tiny_llm_dir, "k", batch_size=4, max_new_tokens=12)
    single = TransformersBackend(tiny_llm_dir, "k", batch_size=1, max_new_tokens=12)
    a = dict(batched.stream(PROMPTS))
    b = dict(single.stream(PROMPTS))
    assert sorted(a) == list(range(len(PROMPTS)))
    assert [a[i].text for i in range(9)] == [b[i].text for i in range(9)]
    assert [a[i].tokens for i in range(9)] == [b[i].tokens for i in range(9)]
    assert batched.stats.calls == 9 and batched.stats.generated_tokens == sum(g.tokens for g in a.values()) > 0
    assert all(0 < g.tokens <= 12 for g in a.values())


def test_retry_samples_instead_of_repeating_greedy(tiny_llm_dir):
    backend = TransformersBackend(tiny_llm_dir, "k", batch_size=9, max_new_tokens=12)
    greedy = dict(backend.stream(PROMPTS))
    sampled = dict(backend.stream(PROMPTS, retry=True))
    assert [greedy[i].text for i in range(9)] != [sampled[i].text for i in range(9)]


def _client(server: LocalLLMServer, **kw) -> OpenAIBackend:
    args = dict(concurrency=4, timeout_s=2.0, max_retries=3, backoff_s=0.01, max_backoff_s=0.05)
    return OpenAIBackend(server.base_url, "smollm2", **{**args, **kw})


def test_openai_backend_answers_every_prompt_and_sends_the_key():
    with LocalLLMServer() as server:
        backend = _client(server, api_key="sk-test-secret")
        out = dict(backend.stream(PROMPTS))
    assert sorted(out) == list(range(9))
    for i, g in out.items():
        assert g.error is None and g.text.split(".")[0].split()[4:6] == ["item", str(i)]
    assert server.behaviour.auth == {"Bearer sk-test-secret"}
    assert all(b["temperature"] == 0.0 and b["max_tokens"] == 40 and b["model"] == "smollm2"
               for b in server.behaviour.bodies)
    assert "sk-test-secret" not in repr(backend) and "sk-test-secret" not in backend.key


def test_openai_backend_retries_429_503_and_timeouts():
    beh = Behaviour(n_429=3, n_503=2, slow_first=2, slow_s=3.0)  # client timeout is 2 s
    with LocalLLMServer(beh) as server:
        backend = _client(server, max_retries=6)
        out = dict(backend.stream(PROMPTS))
    assert all(g.error is None for g in out.values()), [g.error for g in out.values()]
    assert backend.stats.retries >= 3 + 2 + 2
    assert beh.requests == len(PROMPTS) + backend.stats.retries


def test_openai_backend_gives_up_with_a_clear_error():
    with LocalLLMServer(Behaviour(status_always=503)) as server:
        backend = _client(server, max_retries=2)
        out = dict(backend.stream(PROMPTS[:2]))
    assert all("gave up after 3 attempts" in g.error and "HTTP 503" in g.error for g in out.values())


def test_openai_backend_does_not_retry_auth_errors():
    with LocalLLMServer(Behaviour(status_always=401)) as server:
        backend = _client(server)
        out = dict(backend.stream(PROMPTS[:1]))
    assert "HTTP 401" in out[0].error and "api_key_env" in out[0].error
    assert server.behaviour.requests == 1


def test_openai_backend_reports_an_unreachable_server():
    backend = OpenAIBackend("http://127.0.0.1:9/v1", "m", max_retries=1, backoff_s=0.01, timeout_s=1.0)
    (i, g), = list(backend.stream(PROMPTS[:1]))
    assert "gave up after 2 attempts" in g.error and "ConnectError" in g.error


def test_retrying_honours_retry_after_backs_off_exponentially_and_gives_up():
    from pipelines.backends.retry import Retryable, retrying

    answers = [Retryable("429", retry_after="7"), Retryable("429", retry_after="100"), Retryable("503"),
               Retryable("503"), Retryable("503")]
    calls, slept, retried = [], [], []

    def call():
        calls.append(1)
        raise answers[len(calls) - 1]

    r = retrying(max_retries=4, backoff_s=1.0, max_backoff_s=30.0, on_retry=lambda s: retried.append(s.attempt_number))
    r.sleep = slept.append
    with pytest.raises(Retryable, match="503"):
        r(call)
    assert len(calls) == 5 and retried == [1, 2, 3, 4]
    assert slept[:2] == [7.0, 30.0]                       # the server's Retry-After, capped at max_backoff_s
    assert 2.0 <= slept[2] <= 4.0 and 4.0 <= slept[3] <= 8.0  # backoff_s * 2**n with jitter in [0.5, 1]
    assert retrying(2, 1.0, 1.0)(lambda: "ok") == "ok"     # success passes straight through
