"""MLflow's webhook signature: check that an event comes from our MLflow server, and is recent.

MLflow (mlflow/webhooks/delivery.py) signs `"<delivery id>.<timestamp>.<body>"` with HMAC-SHA256
and sends `X-MLflow-Signature: v1,<base64 digest>`, `X-MLflow-Delivery-Id` and `X-MLflow-Timestamp`
(unix seconds). The body is `json.dumps(payload)` with Python's defaults: `", "` and `": "`
separators, ASCII only (`ensure_ascii`), keys in insertion order.

Argo Events hands the body on re-encoded: its webhook source stores the body as a Go
`json.RawMessage`, which `json.Marshal` compacts (no spaces) and HTML-escapes (`<` becomes
`\\u003c`). Neither changes key order, number text or the JSON value, so `canonical_body` rebuilds
the signed bytes from the value alone.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

# The same names as mlflow.webhooks.constants (a test keeps them equal); not imported, because
# step pods do not import mlflow (it is slow to import).
SIGNATURE_HEADER = "X-MLflow-Signature"
TIMESTAMP_HEADER = "X-MLflow-Timestamp"
DELIVERY_ID_HEADER = "X-MLflow-Delivery-Id"
SIGNATURE_VERSION = "v1"
MAX_AGE_SECONDS = 300


class SignatureError(ValueError):
    """The event is not signed by the MLflow server that shares our secret, or is too old to trust."""


def canonical_body(payload: Any) -> bytes:
    """The exact bytes MLflow signed for this payload (mirrors its `json.dumps(webhook_payload)`)."""
    return json.dumps(payload).encode("utf-8")


def sign(secret: str, delivery_id: str, timestamp: str, body: bytes) -> str:
    """The `X-MLflow-Signature` value MLflow sends for these bytes."""
    digest = hmac.new(secret.encode("utf-8"), _signed_content(delivery_id, timestamp, body), hashlib.sha256).digest()
    return f"{SIGNATURE_VERSION},{base64.b64encode(digest).decode('ascii')}"


def verify(secret: str, delivery_id: str, timestamp: str, body: bytes, signature: str, *, now: float,
           max_age: int = MAX_AGE_SECONDS) -> None:
    """Raise SignatureError unless `signature` signs these bytes with `secret`, within `max_age` of `now`."""
    if not secret:
        raise SignatureError("no webhook secret is configured (MLFERRY_WEBHOOK_SECRET), so no event can be trusted")
    if not signature:
        raise SignatureError(f"the event is unsigned (no {SIGNATURE_HEADER} header); "
                             "give the MLflow webhook the same secret as mlferry")
    if not delivery_id:
        raise SignatureError(f"the event has no {DELIVERY_ID_HEADER} header")
    _check_fresh(timestamp, now, max_age)
    expected = sign(secret, delivery_id, timestamp, body).encode("ascii")
    # Several space-separated signatures are allowed (Standard Webhooks, for secret rotation).
    # compare_digest on every candidate: the time taken says nothing about the expected value.
    matches = [hmac.compare_digest(expected, candidate.encode("utf-8")) for candidate in signature.split()]
    if not any(matches):
        raise SignatureError(f"the {SIGNATURE_HEADER} does not match the body: the event was not sent by an "
                             "MLflow server with our secret, or was changed on the way")


def _check_fresh(timestamp: str, now: float, max_age: int) -> None:
    try:
        sent = int(timestamp)
    except (TypeError, ValueError):
        raise SignatureError(f"{TIMESTAMP_HEADER} {timestamp!r} is not a unix time in seconds") from None
    if abs(now - sent) > max_age:
        raise SignatureError(f"the event was sent at {sent}, {int(now - sent)} s from now (limit ±{max_age} s): "
                             "too old to trust, or the clocks disagree")


def _signed_content(delivery_id: str, timestamp: str, body: bytes) -> bytes:
    return f"{delivery_id}.{timestamp}.".encode("utf-8") + body
