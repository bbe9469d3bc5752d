"""Per-model serving settings, from the registered model's own tags.

A data scientist sets them in MLflow next to the model (no platform config to edit):

    mlferry.replicas        whole number 0–100        (else the environment's `replicas`)
    mlferry.cpu_request     Kubernetes quantity       (else `resources.cpu_request`)
    mlferry.memory_request  Kubernetes quantity       (else `resources.memory_request`)
    mlferry.cpu_limit       Kubernetes quantity       (else `resources.cpu_limit`)
    mlferry.memory_limit    Kubernetes quantity       (else `resources.memory_limit`)
    mlferry.runtime         deployment | kserve       (else `runtime`)

resolve reads and checks them, so a bad value fails the promotion with one line before anything
is copied or committed; render applies them. Other tags, `mlferry.*` or not, are ignored.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Mapping, Optional

from pydantic import BaseModel, ConfigDict

TAG_PREFIX = "mlferry."
RESOURCE_KEYS = ("cpu_request", "memory_request", "cpu_limit", "memory_limit")
RUNTIMES = ("deployment", "kserve")
MAX_REPLICAS = 100

# A Kubernetes quantity as people write them: 250m, 0.5, 2, 512Mi, 1Gi, 1G (no exponents).
QUANTITY = re.compile(r"^([0-9]+(\.[0-9]+)?|\.[0-9]+)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")
QUANTITY_RULE = "must be a Kubernetes quantity such as 250m, 0.5, 2, 512Mi or 1Gi"


class ModelTagError(ValueError):
    """A registered-model tag holds a value mlferry cannot use; the message names tag, value and rule."""


def check_quantity(what: str, value: str) -> str:
    if not QUANTITY.match(value):
        raise ModelTagError(f"{what}={value!r} {QUANTITY_RULE}")
    return value


_SUFFIX = {"": 1, "m": Decimal("0.001"), "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15,
           "E": 10**18, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}


def quantity_value(value: str) -> Decimal:
    """A quantity (already checked by QUANTITY) as a number, to compare a request with its limit."""
    match = QUANTITY.match(value)
    if not match:
        raise ValueError(f"{value!r} is not a Kubernetes quantity")
    return Decimal(match.group(1)) * _SUFFIX[match.group(3) or ""]


def check_requests_within_limits(resources: Mapping[str, str], sources: Mapping[str, str]) -> None:
    """Kubernetes refuses a container whose request exceeds its limit: say so now, naming where each
    value came from (`sources`: key → "registered-model tag mlferry.cpu_request" or "resources.cpu_request")."""
    for kind in ("cpu", "memory"):
        request, limit = resources[f"{kind}_request"], resources[f"{kind}_limit"]
        if quantity_value(request) > quantity_value(limit):
            raise ModelTagError(f"{sources[kind + '_request']}={request!r} is more than {sources[kind + '_limit']}="
                                f"{limit!r}: a {kind} request must not exceed its limit")


class ModelServing(BaseModel):
    """What the registered model's tags ask of its serving; empty / None: the settings decide."""

    model_config = ConfigDict(extra="forbid")
    replicas: Optional[int] = None
    cpu_request: str = ""
    memory_request: str = ""
    cpu_limit: str = ""
    memory_limit: str = ""
    runtime: str = ""

    def resources(self) -> dict[str, str]:
        """The requests and limits the tags set."""
        return {key: getattr(self, key) for key in RESOURCE_KEYS if getattr(self, key)}

    def resources_over(self, team: Mapping[str, str]) -> dict[str, str]:
        """The requests and limits a model server gets: the tags' over the team's."""
        return {**team, **self.resources()}


def serving_from_tags(tags: Mapping[str, str]) -> ModelServing:
    """The `mlferry.*` serving tags, checked; the first bad one raises ModelTagError."""
    found: dict[str, object] = {}
    raw = tags.get(TAG_PREFIX + "replicas")
    if raw is not None:
        text = raw.strip()
        if not re.fullmatch(r"[0-9]{1,3}", text) or int(text) > MAX_REPLICAS:
            raise ModelTagError(f"registered-model tag {TAG_PREFIX}replicas={raw!r} must be a whole number "
                                f"from 0 to {MAX_REPLICAS}")
        found["replicas"] = int(text)
    for key in RESOURCE_KEYS:
        raw = tags.get(TAG_PREFIX + key)
        if raw is not None:
            found[key] = check_quantity(f"registered-model tag {TAG_PREFIX}{key}", raw.strip())
    raw = tags.get(TAG_PREFIX + "runtime")
    if raw is not None:
        if raw.strip() not in RUNTIMES:
            raise ModelTagError(f"registered-model tag {TAG_PREFIX}runtime={raw!r} must be one of: "
                                f"{', '.join(RUNTIMES)}")
        found["runtime"] = raw.strip()
    return ModelServing.model_validate(found)
