"""withItems and withParam: one task or step fanned out into a node per item.

The items come from the list in the YAML or from a JSON list in a parameter (withParam); each
node is named `<task>(<index>:<item>)` as Argo names it, and the task's outcome is its group's
(engine.nodes.group_outcome).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

from mlferry.engine.expressions import argo_string
from mlferry.engine.nodes import NodeError, Outcome, group_outcome
from mlferry.engine.runs import TaskRecord


def items(resolved: Mapping[str, Any]) -> list[Any] | None:
    """The items of a call whose tags are substituted, or None when it does not fan out."""
    if "withItems" in resolved:
        return list(resolved["withItems"])
    if "withParam" not in resolved:
        return None
    text = str(resolved["withParam"])
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if not isinstance(value, list):
        raise NodeError(f"withParam value could not be parsed as a JSON list: {text.strip()}")
    return value


def item_label(item: Any) -> str:
    """How an item shows in its node's name."""
    if isinstance(item, dict):
        return ",".join(sorted(f"{k}:{argo_string(v)}" for k, v in item.items()))
    return argo_string(item)


@dataclass
class Group:
    """The children of one task or step: one node, or one per item when it fans out."""

    name: str
    expanded: bool
    outcomes: list[Outcome | None]
    record: TaskRecord | None = None
    clock: float = field(default_factory=time.monotonic)

    @property
    def complete(self) -> bool:
        return all(o is not None for o in self.outcomes)

    def outcome(self) -> Outcome:
        if not self.expanded:
            return self.outcomes[0]  # type: ignore[return-value]
        return group_outcome(self.outcomes)  # type: ignore[arg-type]
