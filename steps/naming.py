"""Model names → DNS-1123 slugs.

MLflow accepts almost any string as a model name; Kubernetes names, S3 prefixes and GitOps
folders do not. A slug is the name itself when it already is a short DNS-1123 label, and
otherwise a readable stem plus a hash of the *original* name, so that two names never share a
slug (``Wine`` and ``wine`` differ), and no slug can contain ``/`` or ``..``.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

# A slug is used as "<slug>-<env>" in Kubernetes names (≤ 63 characters), so it keeps room
# for an environment name of up to MAX_ENV_LENGTH characters and the dash.
MAX_ENV_LENGTH = 22
MAX_SLUG_LENGTH = 63 - 1 - MAX_ENV_LENGTH
HASH_LENGTH = 10

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def is_dns_label(value: str, max_length: int = 63) -> bool:
    return len(value) <= max_length and bool(_DNS_LABEL.match(value))


def slugify(name: str) -> str:
    """Map any model name to a DNS-1123 label of at most MAX_SLUG_LENGTH characters."""
    if not name or not name.strip():
        raise ValueError("model name is empty")
    if is_dns_label(name, MAX_SLUG_LENGTH):
        return name
    digest = hashlib.sha256(name.encode("utf-8")).hexdigest()[:HASH_LENGTH]
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii")
    stem = re.sub(r"[^a-z0-9]+", "-", ascii_name.lower()).strip("-")
    stem = stem[: MAX_SLUG_LENGTH - HASH_LENGTH - 1].strip("-")
    return f"{stem}-{digest}" if stem else f"m-{digest}"


def check_environment_name(env: str) -> str:
    """Environment names become part of Kubernetes names and folder names."""
    if not is_dns_label(env, MAX_ENV_LENGTH):
        raise ValueError(
            f"environment name {env!r} must be a DNS-1123 label of at most {MAX_ENV_LENGTH} "
            "characters (lowercase letters, digits and '-')"
        )
    return env


def kubernetes_name(slug: str, env: str) -> str:
    return f"{slug}-{check_environment_name(env)}"
