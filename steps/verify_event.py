"""verify-event: the first task of a webhook-triggered promotion; trust the event or stop the run.

Argo Events' webhook source cannot check MLflow's signature, so this step does, before any side
effect: signature and timestamp window (steps/signature.py), then the same filter the Sensor
applied (steps/event_filter.py), so an event the Sensor let through by mistake stops here too.
Without an event (a manual, CLI or reconcile submit) there is nothing to verify and it succeeds.
The secret comes from MLFERRY_WEBHOOK_SECRET (the bundle's webhook Secret).
"""
# No `from __future__ import annotations`: Hera reads the Input/Output annotations as classes.
# The filter and the check live in steps/ so that the step, the Sensor builder (sensors/) and
# the local receiver all run the very same code.

import json
import logging
import os
import time
from datetime import datetime, timezone
from typing import Any

from hera.workflows import Input, Output

from mlferry.steps.event_filter import AmbiguousBody, accept, parse_body
from mlferry.steps.signature import (DELIVERY_ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, SignatureError,
                                     canonical_body, verify)
from mlferry.steps.outcome import as_argo_step
from mlferry.steps.settings import Settings, load_settings

log = logging.getLogger(__name__)
SECRET_ENV = "MLFERRY_WEBHOOK_SECRET"
# The workflow parameters that carry a webhook event to this step, each from a request header, and
# the body. Declared once: the WorkflowTemplate takes them (workflows/promote.py), the Sensor fills them
# (sensors/parameters.py).
EVENT_HEADERS = {"delivery_id": DELIVERY_ID_HEADER, "timestamp": TIMESTAMP_HEADER, "signature": SIGNATURE_HEADER}
# When the event was received: the EventSource stamps each event (its CloudEvents `time`, set as it
# dispatches the request; argo-events pkg/eventsources/eventing.go), the local receiver likewise.
RECEIVED_AT = "received_at"
EVENT_PARAMETERS = (*EVENT_HEADERS, "body", RECEIVED_AT)
CLOCK_SKEW = 60  # seconds a receipt time may lie ahead of this pod's clock


class VerifyEventInput(Input):
    # What the run was asked for (the workflow's parameters; from a Sensor, read out of the body).
    model: str = ""
    alias: str = ""
    env: str = ""
    delivery_id: str = ""
    timestamp: str = ""
    signature: str = ""
    body: str = ""  # the webhook body as a JSON string; empty when no event started the run
    received_at: str = ""  # RFC 3339: when the event was received; "": measure the age now


class VerifiedEvent(Output):
    """What the later steps act on: the signed event's own words, or, without an event, the
    parameters as given (a manual or reconcile run, whose submitter could set anything anyway)."""

    verified: bool = False  # False: no event was passed, nothing to verify
    delivery_id: str = ""
    action: str = ""  # created | deleted; "" without an event
    model: str = ""
    alias: str = ""
    version: str = ""  # empty on `deleted`
    env: str = ""


class EventRejected(ValueError):
    """The event must not start a promotion; retrying cannot change that."""


@as_argo_step
def verify_event(inputs: VerifyEventInput) -> VerifiedEvent:
    if not inputs.body:
        return VerifiedEvent(model=inputs.model, alias=inputs.alias, env=inputs.env)
    return verified_event(inputs, os.environ.get(SECRET_ENV, ""), load_settings(),
                          now=receipt_time(inputs.received_at, time.time()))


def verified_event(inputs: VerifyEventInput, secret: str, settings: Settings, *, now: float) -> VerifiedEvent:
    payload = _parse(inputs.body)
    try:
        _verify_any(secret, inputs, _signed_forms(inputs.body, payload), now)
    except SignatureError as err:
        raise EventRejected(f"webhook event {inputs.delivery_id or '(no delivery id)'} rejected: {err}") from None
    decision = accept(payload, settings)
    if not decision.accepted:
        raise EventRejected(f"webhook event {inputs.delivery_id} is signed but not a promotion: {decision.reason}")
    _check_parameters(inputs, decision)
    return VerifiedEvent(verified=True, delivery_id=inputs.delivery_id, action=decision.action,
                         model=decision.model, alias=decision.alias, version=decision.version, env=decision.env)


def receipt_time(received_at: str, now: float) -> float:
    """The moment the signature's age is measured at: when the event was received, so that a queue
    or a slow image pull before this pod cannot make a fresh event look stale. A receipt time that
    is unreadable or in the future is not used: the age is measured now, the stricter reading."""
    if not received_at:
        return now
    try:
        stamp = datetime.fromisoformat(received_at.replace("Z", "+00:00"))
    except ValueError:
        log.warning("the event's receipt time %r is not RFC 3339: measuring its age now", received_at[:40])
        return now
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=timezone.utc)
    received = stamp.timestamp()
    if received > now + CLOCK_SKEW:
        log.warning("the event's receipt time %s is ahead of this clock: measuring its age now", received_at)
        return now
    return min(received, now)


def _check_parameters(inputs: VerifyEventInput, decision) -> None:
    """The run's parameters, when given, must say what the signed event says: they title the run
    in the Argo UI and name the version the exit handler tags, so a forged pairing of a genuine
    body with another model's name stops here."""
    for name in ("model", "alias", "env"):
        given, signed = getattr(inputs, name), getattr(decision, name)
        if given and given != signed:
            raise EventRejected(f"webhook event {inputs.delivery_id}: the run's parameter {name}={given!r} "
                                f"is not the signed event's {signed!r}")


def _parse(body: str) -> Any:
    try:
        return parse_body(body)
    except AmbiguousBody as err:
        raise EventRejected(f"the webhook body is refused: {err}") from None
    except json.JSONDecodeError as err:
        raise EventRejected(f"the webhook body is not JSON: {err}") from None


def _signed_forms(body: str, payload: Any) -> list[bytes]:
    """The body as received, then as MLflow wrote it (Argo Events hands it on compacted)."""
    received, canonical = body.encode("utf-8"), canonical_body(payload)
    return [received] if received == canonical else [received, canonical]


def _verify_any(secret: str, inputs: VerifyEventInput, forms: list[bytes], now: float) -> None:
    for form in forms:
        try:
            return verify(secret, inputs.delivery_id, inputs.timestamp, form, inputs.signature, now=now)
        except SignatureError as err:
            rejected = err
    raise rejected
