"""One redaction of every configured secret for everything stored, logged or sent to MLflow."""
from __future__ import annotations

from pipelines.secrets import MASK, redact, secret_env_names


def test_every_secret_of_the_stage_table_and_the_config_is_masked(monkeypatch):
    assert "RECPIPE_LLM_API_KEY" in secret_env_names()
    monkeypatch.setenv("RECPIPE_LLM_API_KEY", "sk-abc123")
    monkeypatch.setenv("MY_GATEWAY_KEY", "gw-999-zzz")
    rec = {"error": "HTTP 401: invalid key sk-abc123", "traceback": ["line", "Bearer gw-999-zzz"], "n": 3}
    out = redact(rec, ("MY_GATEWAY_KEY",))
    assert out == {"error": f"HTTP 401: invalid key {MASK}", "traceback": ["line", f"Bearer {MASK}"], "n": 3}
    assert redact(rec)["traceback"][1] == "Bearer gw-999-zzz"  # not configured: not a secret


def test_nothing_to_mask_and_short_values(monkeypatch):
    monkeypatch.delenv("RECPIPE_LLM_API_KEY", raising=False)
    assert redact("plain text") == "plain text"
    monkeypatch.setenv("RECPIPE_LLM_API_KEY", "ab")  # too short to tell from ordinary text
    assert redact("a tab") == "a tab"


def test_a_secret_that_contains_another_is_masked_whole(monkeypatch):
    monkeypatch.setenv("RECPIPE_LLM_API_KEY", "key1")
    monkeypatch.setenv("OTHER", "key1-longer")
    assert redact("x key1-longer y", ("OTHER",)) == f"x {MASK} y"
