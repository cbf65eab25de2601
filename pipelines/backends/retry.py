"""Retries for calls to remote services (LLM servers now, search APIs next), on tenacity.

A call raises ``Retryable`` for a failure worth repeating (429, 5xx, a timeout, a transport error), with the
server's ``Retry-After`` when it sent one; anything else propagates at once. Waits are the server's ``Retry-After``
seconds, else exponential backoff with jitter (``backoff_s * 2**n * U(0.5, 1)``), capped at ``max_backoff_s``.
"""
from __future__ import annotations

import random
from typing import Callable

from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt


class Retryable(Exception):
    """A failed call worth repeating; ``retry_after``: the server's ``Retry-After`` header, if any."""

    def __init__(self, message: str, retry_after: str | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def retrying(max_retries: int, backoff_s: float, max_backoff_s: float,
             on_retry: Callable[[RetryCallState], None] | None = None) -> Retrying:
    """At most ``max_retries + 1`` attempts; after the last, the last ``Retryable`` is raised."""

    def wait(state: RetryCallState) -> float:
        try:
            seconds = float(state.outcome.exception().retry_after)
        except (TypeError, ValueError):
            seconds = backoff_s * 2 ** (state.attempt_number - 1) * (0.5 + random.random() / 2)
        return min(max_backoff_s, max(0.0, seconds))

    return Retrying(stop=stop_after_attempt(max_retries + 1), wait=wait, retry=retry_if_exception_type(Retryable),
                    before_sleep=on_retry, reraise=True)
