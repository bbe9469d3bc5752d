"""Which MLflow webhook events start a promotion: defined once, as plain values.

The Sensor's data filters (sensors/objects.py) are built from these values, and `accept` evaluates
the same rule in Python for the local receiver and for the verify-event step, which re-checks every
event after its signature. MLflow (>= 3.3) posts `{entity, action, timestamp, data}`; for aliases
(mlflow/webhooks/types.py) `data` is `{name, alias, version}` on `created` and `{name, alias}` on
`deleted`. A moved alias sends only `created`. mlferry's own writes are tags
(`model_version_tag.set`), never alias events, so they cannot start a promotion.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from mlferry.steps.settings import Settings

ENTITY = "model_version_alias"
# Argo substitutes `{{…}}` in every parameter it passes on: a name holding one cannot travel as one.
TEMPLATE_START = "{{"
ACTIONS = ("created", "deleted")


class AmbiguousBody(ValueError):
    """A JSON body that names one key twice in an object: readers disagree on which one counts."""


def parse_body(text: str) -> Any:
    """The webhook body as JSON, refusing any object that repeats a key. Python keeps the last of
    two equal keys and gjson (the Sensor's parameters) the first, so a signed body re-sent with
    `"name"` twice could be verified for one model and acted on for another."""
    return json.loads(text, object_pairs_hook=_unique_keys)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise AmbiguousBody(f"the body repeats the key {key!r} in one object; a webhook body with "
                                "duplicate keys is refused, since readers disagree on which one counts")
        seen[key] = value
    return seen


@dataclass(frozen=True)
class Decision:
    """Whether an event starts a promotion; what it asks for, or why it is ignored."""

    accepted: bool
    reason: str = ""
    action: str = ""
    model: str = ""
    alias: str = ""
    version: str = ""  # empty on `deleted`: MLflow sends none
    env: str = ""


def environment_aliases(settings: Settings) -> dict[str, tuple[str, ...]]:
    """Environment -> the aliases that select its version; environments without aliases are left out."""
    return {env: tuple(cfg.aliases) for env, cfg in settings.environments.items() if cfg.aliases}


def accept(event: Any, settings: Settings) -> Decision:
    """The filter the Sensor applies, as a value: accepted with what to promote, or ignored with a reason."""
    if not isinstance(event, dict):
        return _ignored("the event is not a JSON object")
    entity, action, data = event.get("entity"), event.get("action"), event.get("data")
    if entity != ENTITY:
        return _ignored(f"entity {entity!r} is not {ENTITY!r}")
    if action not in ACTIONS:
        return _ignored(f"action {action!r} is not one of {', '.join(ACTIONS)}")
    if not isinstance(data, dict):
        return _ignored("the event has no data object")
    model, alias = data.get("name"), data.get("alias")
    if not isinstance(model, str) or not model:
        return _ignored("the event names no model")
    if TEMPLATE_START in model:
        return _ignored(f"the model name {model[:80]!r} holds {TEMPLATE_START!r}, which Argo reads as a template "
                        "variable in the workflow's parameters: rename the registered model")
    if not isinstance(alias, str):
        return _ignored("the event names no alias")
    env = settings.environment_for_alias(alias)
    if env is None:
        known = ", ".join(sorted(a for aliases in environment_aliases(settings).values() for a in aliases))
        return _ignored(f"alias {alias!r} selects no environment (configured aliases: {known or 'none'})")
    version = data.get("version")
    return Decision(accepted=True, action=action, model=model, alias=alias,
                    version=version if isinstance(version, str) else "", env=env)


def _ignored(reason: str) -> Decision:
    return Decision(accepted=False, reason=reason)
