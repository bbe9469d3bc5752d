"""Strict validation of Argo objects: an unknown field anywhere is an error.

Hera's Pydantic models mirror Argo's OpenAPI types but accept unknown keys, and Argo itself
prunes them silently, so a misspelt `contaner:` would ship and do nothing. The JSON schema is
derived from Hera's models (the same source that generates the YAML) with every object closed
(`additionalProperties: false`), then the document is checked against it.
"""

import functools
from typing import Any

import jsonschema

KINDS = {
    ("argoproj.io/v1alpha1", "WorkflowTemplate"): "hera.workflows.models:WorkflowTemplate",
    ("argoproj.io/v1alpha1", "Workflow"): "hera.workflows.models:Workflow",
    ("argoproj.io/v1alpha1", "CronWorkflow"): "hera.workflows.models:CronWorkflow",
    ("argoproj.io/v1alpha1", "EventSource"): "hera.events.models:EventSource",
    ("argoproj.io/v1alpha1", "Sensor"): "hera.events.models:Sensor",
}


class ArgoValidationError(ValueError):
    """A generated or loaded Argo object does not match Argo's types."""


def validate_argo(doc: dict[str, Any], source: str = "document") -> None:
    key = (doc.get("apiVersion"), doc.get("kind"))
    if key not in KINDS:
        raise ArgoValidationError(f"{source}: not an Argo object mlferry knows (apiVersion/kind {key})")
    validator = _validator(KINDS[key])
    errors = sorted((leaf for e in validator.iter_errors(doc) for leaf in _leaves(e)),
                    key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        lines = [f"  {'.'.join(map(str, e.absolute_path)) or '(top)'}: {_short(e)}" for e in errors[:10]]
        name = (doc.get("metadata") or {}).get("name", "?")
        raise ArgoValidationError(f"{source}: {doc['kind']} {name} is not valid:\n" + "\n".join(lines))


def _leaves(err: jsonschema.ValidationError) -> list[jsonschema.ValidationError]:
    """The errors that say what is wrong, rather than "not valid under any of the given schemas".

    Optional fields are `anyOf: [<type>, null]`; the branch whose errors reach deepest into the
    document is the one the author meant.
    """
    if not err.context:
        return [err]
    branches: dict[Any, list[jsonschema.ValidationError]] = {}
    for sub in err.context:
        branches.setdefault(sub.relative_schema_path[0], []).append(sub)
    meant = max(branches.values(), key=lambda subs: max(len(s.absolute_path) for s in subs))
    return [leaf for sub in meant for leaf in _leaves(sub)]


def _short(err: jsonschema.ValidationError) -> str:
    if err.validator == "additionalProperties":
        return f"unknown field(s) {err.message.split('(')[-1].rstrip(')')}"
    return err.message[:200]


@functools.cache
def _validator(model_path: str) -> jsonschema.Draft202012Validator:
    import importlib

    module, name = model_path.split(":")
    model = getattr(importlib.import_module(module), name)
    schema = model.model_json_schema(by_alias=True, mode="validation")
    if module == "hera.events.models":
        _correct_events_schema(schema)
    return jsonschema.Draft202012Validator(_closed(schema))


def _correct_events_schema(schema: dict[str, Any]) -> None:
    """Fix what Hera's generated Argo Events models get wrong.

    Their schema would reject what the controller reads and accept what it silently ignores:
    the objects have no apiVersion and kind;
    the webhook source embeds its context inline (Go `json:",inline"`), not under `webhookContext`;
    Int64OrString, Amount and K8SResource marshal as an integer-or-string, a number and a free-form
    object, not as the Go structs behind them. The shapes are those of Argo Events' own
    api/jsonschema/schema.json.
    """
    schema["properties"].update(apiVersion={"type": "string"}, kind={"type": "string"})
    defs = schema["$defs"]
    if "WebhookEventSource" in defs:
        defs["WebhookEventSource"] = {
            "type": "object",
            "properties": {**defs["WebhookContext"]["properties"], "maxPayloadSize": {"type": "integer"},
                           "filter": defs["WebhookEventSource"]["properties"]["filter"]},
        }
    for name, shape in _EVENTS_SCALARS.items():
        if name in defs:
            defs[name] = shape


_EVENTS_SCALARS = {
    "Int64OrString": {"type": ["integer", "string"]},
    "Amount": {"type": "number"},
    "K8SResource": {"type": "object"},  # the resource to create; validate it with its own kind
}


def _closed(node: Any) -> Any:
    """Close every object schema that lists its properties; leave free-form maps open."""
    if isinstance(node, dict):
        node = {k: _closed(v) for k, v in node.items()}
        if node.get("type") == "object" and "properties" in node and "additionalProperties" not in node:
            node["additionalProperties"] = False
        return node
    if isinstance(node, list):
        return [_closed(v) for v in node]
    return node
