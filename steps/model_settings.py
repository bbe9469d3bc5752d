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
from typing import Mapping, Optional

from pydantic import BaseModel, ConfigDict

TAG_PREFIX = "mlferry."
RESOURCE_KEYS = ("cpu_request", "memory_request", "cpu_limit", "memory_limit")
RUNTIMES = ("deployment", "kserve")
MAX_REPLICAS = 100

# A Kubernetes quantity as people write them: 250m, 0.5, 2, 512Mi, 1Gi, 1G (no exponents).
QUANTITY = re.compile(r"^([0-9]+(\.[0-9]+)?|\.[0-9]+)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")


class ModelTagError(ValueError):
    """A registered-model tag holds a value mlferry cannot use; the message names tag, value and rule."""


def check_quantity(what: str, value: str) -> str:
    if not QUANTITY.match(value):
        raise ModelTagError(f"{what}={value!r} must be a Kubernetes quantity such as 250m, 0.5, 2, 512Mi or 1Gi")
    return value


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
        return {key: getattr(self, key) for key in RESOURCE_KEYS if getattr(self, key)}


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
