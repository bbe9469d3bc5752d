"""What the Sensor reads from a webhook event: its filter and the workflow parameters it fills.

Kept here, beside the Sensor builder (sensors/objects.py), because the local receiver
(mlferry/receiver.py) emulates the Sensor with these same functions: the Sensor and its emulation
can only change together.
"""

from __future__ import annotations

import json
from typing import Any, Iterable

from hera.events.models import DataFilter

from mlferry.steps.event_filter import ACTIONS, ENTITY, TEMPLATE_START
from mlferry.steps.verify_event import EVENT_HEADERS, EVENT_PARAMETERS, RECEIVED_AT

# Argo Events matches a string filter value as an unanchored Go regexp: any one character,
# newlines included (?s), found anywhere means "not empty".
NON_EMPTY = "(?s)."
_GO_REGEXP_SPECIAL = set(r"\.+*?()|[]{}^$")


def data_filters(aliases: tuple[str, ...]) -> list[DataFilter]:
    """steps.event_filter.accept, as Argo Events data filters on the webhook event (`body` is MLflow's JSON)."""
    return [
        DataFilter(path="body.entity", type="string", value=[exactly(ENTITY)]),
        DataFilter(path="body.action", type="string", value=[exactly(a) for a in ACTIONS]),
        DataFilter(path="body.data.name", type="string", value=[NON_EMPTY]),
        DataFilter(path="body.data.name", type="string", comparator="!=", value=[exactly(TEMPLATE_START)[1:-1]]),
        DataFilter(path="body.data.alias", type="string", value=[exactly(a) for a in aliases]),
    ]


def exactly(text: str) -> str:
    """A Go regexp matching `text` only: Argo Events matches string filters as unanchored regexps."""
    return "^" + "".join("\\" + c if c in _GO_REGEXP_SPECIAL else c for c in text) + "$"


def canonical_header(name: str) -> str:
    """A header name as Go's net/http keys it (`x-mlflow-signature` → `X-Mlflow-Signature`)."""
    return "-".join(part[:1].upper() + part[1:].lower() for part in name.split("-"))


def header_path(name: str) -> str:
    """Where the webhook event keeps a request header: Go canonicalises its name, values are a list."""
    return f"header.{canonical_header(name)}.0"


CONTEXT = "context."  # a path into the event's CloudEvents context, not its data


def _event_source(name: str) -> tuple[str, str | None]:
    if name == "body":
        return ("body", None)  # the JSON text of the body, as the event source re-encoded it
    if name == RECEIVED_AT:
        return (CONTEXT + "time", "")  # stamped by the EventSource when it dispatched the request
    return (header_path(EVENT_HEADERS[name]), "")


# Workflow parameter -> (path in the webhook event, default when absent). No default: the
# filters guarantee the path. Missing headers pass on as "" for verify-event to reject with a
# clear message, instead of a trigger error in the Sensor's log. No `version`: resolve selects by
# exactly one of version/alias, and resolving the alias when the run starts lets the latest move win.
TRIGGER_PARAMETERS: dict[str, tuple[str, str | None]] = {
    "model": ("body.data.name", None),
    "alias": ("body.data.alias", None),
    **{name: _event_source(name) for name in EVENT_PARAMETERS},
}


def event_values(headers: Iterable[tuple[str, str]], body_text: str, payload: Any,
                 received_at: str = "") -> dict[str, str]:
    """TRIGGER_PARAMETERS' values for one request, read as the Sensor reads them.

    `headers` are the request's (name, value) pairs, `payload` its parsed body. `body` is the body as
    received: Argo Events hands on a compacted copy, which verify-event also accepts. `received_at`
    (RFC 3339) is what the EventSource's context says: when the request arrived.
    """
    canonical: dict[str, list[str]] = {}
    for name, value in headers:
        canonical.setdefault(canonical_header(name), []).append(str(value))
    event = {"header": canonical, "body": payload}
    values = {}
    for name, (path, default) in TRIGGER_PARAMETERS.items():
        found = (body_text if path == "body" else received_at if path.startswith(CONTEXT)
                 else _lookup(event, path))
        values[name] = (default or "") if found is None else found
    return values


def _lookup(value: Any, path: str) -> str | None:
    """A gjson-style path (`a.b.0`) into JSON values; objects and arrays come back as JSON text."""
    for part in path.split("."):
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return None
    if value is None:
        return None
    return value if isinstance(value, str) else json.dumps(value)
