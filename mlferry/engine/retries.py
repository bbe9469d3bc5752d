"""When Argo tries a failed node again: retryStrategy's policy, limit, expression and backoff.

A pure decision (operator.go, processNodeRetries), so that it can be checked without waiting.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from typing import Any, Mapping, Protocol

from mlferry.engine.expressions import ExpressionError, evaluate
from mlferry.engine.runs import ERROR, FAILED
from mlferry.engine.scope import last_retry_vars

log = logging.getLogger(__name__)

# Argo's transient errors (util/errors/errors.go), plus TRANSIENT_ERROR_PATTERN from the environment.
_TRANSIENT = ("Connection closed by foreign host", "net/http: TLS handshake timeout", "i/o timeout",
              "connection timed out", "connection reset by peer", "http2: client connection lost",
              "http2: server sent GOAWAY and closed the connection", "connect: connection refused",
              "invalid connection", "etcdserver: leader changed", "etcdserver: request timed out")

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: Any) -> float:
    """Seconds in an Argo duration: a number of seconds, or a Go duration such as '1m30s'."""
    text = str(text).strip()
    if re.fullmatch(r"\d+", text):
        return float(text)
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"{text!r} is not a duration (e.g. '30s', '2m', '1h30m')")
    return sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)


class Attempt(Protocol):
    """How the last attempt ended."""

    phase: str
    message: str
    exit_code: int | None


@dataclass(frozen=True)
class RetryDecision:
    wait: float | None  # seconds until the next attempt; None: stop here
    reason: str = ""
    deadline: float | None = None  # from backoff.maxDuration, on the same clock as `now`


def next_retry(strategy: Mapping[str, Any], attempts: int, last: Attempt, last_duration: float,
               first_started: float, now_: float, scale: float = 1.0) -> RetryDecision:
    """Whether and when to try again, in the order Argo decides (operator.go, processNodeRetries).

    `scale` multiplies every backoff duration, so tests need not wait real seconds.
    """
    backoff = strategy.get("backoff") or {}
    wait, deadline = 0.0, None
    if backoff:
        if "maxDuration" in backoff:
            deadline = first_started + parse_duration(backoff["maxDuration"]) * scale
            if now_ > deadline:
                return RetryDecision(None, "Max duration limit exceeded")
        wait = parse_duration(backoff["duration"]) * scale
        factor = int(backoff.get("factor") or 0)
        if factor > 0:  # duration * factor^(attempts-1): the first retry waits `duration`
            wait *= factor ** (attempts - 1)
        if "cap" in backoff:
            wait = min(wait, parse_duration(backoff["cap"]) * scale)
        if deadline is not None and now_ + wait > deadline:
            return RetryDecision(None, "Backoff would exceed max duration limit")
    policy = strategy.get("retryPolicy") or ("Always" if strategy.get("expression") else "OnFailure")
    if not _policy_retries(policy, last):
        return RetryDecision(None, f"retryPolicy {policy} does not retry a node that ended {last.phase}")
    limit = strategy.get("limit")
    if limit is not None and attempts > int(limit):
        return RetryDecision(None, "No more retries left")
    if strategy.get("expression") and not _expression_retries(strategy["expression"], last, last_duration):
        return RetryDecision(None, "retryStrategy.expression evaluated to false")
    return RetryDecision(wait, deadline=deadline)


def _policy_retries(policy: str, last: Attempt) -> bool:
    if policy == "Always":
        return True
    if policy == "OnFailure":
        return last.phase == FAILED
    if policy == "OnError":
        return last.phase == ERROR
    pattern = os.environ.get("TRANSIENT_ERROR_PATTERN")  # OnTransientError
    return any(t in last.message for t in _TRANSIENT) or bool(pattern and re.search(pattern, last.message))


def _expression_retries(expression: str, last: Attempt, duration: float) -> bool:
    scope = last_retry_vars(last.exit_code, last.phase, duration, last.message)
    try:
        return evaluate(expression, scope) is True
    except ExpressionError as err:
        log.warning("retryStrategy.expression %r: %s", expression, err)
        return False
