"""One redaction of every configured secret, applied to every text recpipe stores, logs or sends to MLflow.

The secrets are the values of the environment variables named in the stage table (``pipelines.graph``: each
stage's ``secrets``) and by the config (``describe.openai.api_key_env``, ``web.tavily.api_key_env``,
``web.brave.api_key_env``: ``secret_envs``). A server that echoes the API key in an
error body (some gateways do) must not put it into ``runs/<ds>/stages/*.json``, ``summary.json`` or a log line.
"""
from __future__ import annotations

import os
from typing import Any

from pipelines.graph import STAGES

MASK = "[REDACTED]"
MIN_LENGTH = 4  # shorter values would mask ordinary words


def secret_envs(cfg: Any) -> tuple[str, ...]:
    """The environment variables the config names as holding secrets (``cfg``: the run's ``Config``)."""
    return (cfg.describe.openai.api_key_env, cfg.web.tavily.api_key_env, cfg.web.brave.api_key_env)


def secret_env_names(extra: tuple[str, ...] = ()) -> set[str]:
    return {s.env for st in STAGES for s in st.secrets} | {e for e in extra if e}


def secret_values(extra_env: tuple[str, ...] = ()) -> list[str]:
    """The configured secrets' current values, longest first (so a secret containing another is masked whole)."""
    vals = {os.environ.get(n, "") for n in secret_env_names(extra_env)}
    return sorted((v for v in vals if len(v) >= MIN_LENGTH), key=len, reverse=True)


def redact(value: Any, extra_env: tuple[str, ...] = ()) -> Any:
    """``value`` with every secret replaced by ``[REDACTED]``: strings, and the strings inside dicts and lists."""
    secrets = secret_values(extra_env)
    if not secrets:
        return value

    def walk(v: Any) -> Any:
        if isinstance(v, str):
            for s in secrets:
                v = v.replace(s, MASK)
            return v
        if isinstance(v, dict):
            return {k: walk(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return type(v)(walk(x) for x in v)
        return v

    return walk(value)
