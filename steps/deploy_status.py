"""What an environment runs: the answer the verify step waits on, from Argo CD or the local applier.

One shape for both sources, so one verify step serves a cluster and a laptop, with only the
source differing:

- on a cluster, the Argo CD Application the ApplicationSet made for the model's GitOps folder
  (steps/argocd_status.py): `status.sync.revision`, `status.sync.status`, `status.health.status`;
- locally, the local applier (mlferry/applier.py), which plays Argo CD and the kubelet for the
  `deployment` runtime and writes the same three facts per folder into a status file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

SYNCED = "Synced"
HEALTHY = "Healthy"
# Argo CD's health states (gitops-engine health.HealthStatusCode); the local applier uses the same.
HEALTH_STATES = ("Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown")
# Waiting on these cannot end well: the verify step stops at once instead of at the deadline.
FAILED_HEALTH = ("Degraded",)


@dataclass(frozen=True)
class DeployStatus:
    """One environment of one model, as its status source sees it now."""

    revision: str = ""  # the GitOps commit the environment last synced ("" when never)
    sync: str = "Unknown"  # Synced | OutOfSync | Unknown
    health: str = "Unknown"  # one of HEALTH_STATES
    message: str = ""  # one line for people: why it is not healthy, or what it is doing
    endpoint: str = ""  # the model server's base URL (http://host:port), "" when unknown

    @property
    def running(self) -> bool:
        return self.sync == SYNCED and self.health == HEALTHY

    @property
    def failed(self) -> bool:
        return self.health in FAILED_HEALTH


class StatusSource(Protocol):
    """Where the verify step and `mlferry status` read what an environment runs."""

    name: str  # "argocd" | "local": shown in logs and tags

    def read(self, folder: str) -> DeployStatus:
        """The status of GitOps folder `teams/<team>/<slug>/<env>`; raise only when the source
        itself cannot answer (that is transient, and retried), never for a missing deployment."""
        ...


def status_source(settings) -> StatusSource | None:
    """The configured source (settings `verify`), or None when verification is off."""
    if settings.verify == "off":
        return None
    if settings.verify == "local":
        from mlferry.steps.local_status import local_source

        return local_source(settings)
    from mlferry.steps.argocd_status import argocd_source

    return argocd_source(settings)
