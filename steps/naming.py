"""Model names → DNS-1123 slugs, and every Kubernetes name rule mlferry checks (one home for them).

MLflow accepts almost any string as a model name; Kubernetes names, S3 prefixes and GitOps
folders do not. A slug is the name itself when it already is a short DNS-1123 label, and
otherwise a readable stem plus a hash of the *original* name, so that two names never share a
slug (``Wine`` and ``wine`` differ), and no slug can contain ``/`` or ``..``.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

# A slug is used as "<slug>-<env>" in Kubernetes names. KServe appends "-predictor" (10) to an
# InferenceService's name and the result must stay a 63-character label, so "<slug>-<env>"
# gets 53: room for an environment name of up to MAX_ENV_LENGTH characters and the dash.
MAX_NAME_LENGTH = 53
MAX_ENV_LENGTH = 12
MAX_SLUG_LENGTH = MAX_NAME_LENGTH - 1 - MAX_ENV_LENGTH
HASH_LENGTH = 10

_DNS_1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
# Services (and so InferenceServices) need RFC 1035 labels: a letter first.
_DNS_1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_DNS_1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")


def is_dns_label(value: str, max_length: int = 63) -> bool:
    """A DNS-1123 label: namespaces, most object names' parts, teams, folders."""
    return isinstance(value, str) and len(value) <= max_length and bool(_DNS_1123_LABEL.match(value))


def is_dns_1035_label(value: str, max_length: int = 63) -> bool:
    """A DNS-1035 label (a letter first): Service names, and so slugs and environments."""
    return isinstance(value, str) and len(value) <= max_length and bool(_DNS_1035_LABEL.match(value))


def is_dns_subdomain(value: str) -> bool:
    """A DNS-1123 subdomain: most object names (Secrets, ConfigMaps, …) and label key prefixes."""
    return isinstance(value, str) and len(value) <= 253 and bool(_DNS_1123_SUBDOMAIN.match(value))


def is_label_value(value: str) -> bool:
    return value == "" or (len(value) <= 63 and bool(_QUALIFIED_NAME.match(value)))


def is_qualified_key(key: str) -> bool:
    """A label or annotation key: an optional DNS subdomain prefix and '/', then a name."""
    prefix, _, name = key.rpartition("/")
    if prefix and not is_dns_subdomain(prefix):
        return False
    return len(name) <= 63 and bool(_QUALIFIED_NAME.match(name))


def is_slug(value: str) -> bool:
    return is_dns_1035_label(value, MAX_SLUG_LENGTH)


def slugify(name: str) -> str:
    """Map any model name to an RFC 1035 label of at most MAX_SLUG_LENGTH characters."""
    if not name or not name.strip():
        raise ValueError("model name is empty")
    if is_slug(name):
        return name
    digest = hashlib.sha256(name.encode("utf-8")).hexdigest()[:HASH_LENGTH]
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii")
    stem = re.sub(r"[^a-z0-9]+", "-", ascii_name.lower()).strip("-")
    if stem[:1].isdigit():
        stem = f"m-{stem}"
    stem = stem[: MAX_SLUG_LENGTH - HASH_LENGTH - 1].strip("-")
    return f"{stem}-{digest}" if stem else f"m-{digest}"


def check_environment_name(env: str) -> str:
    """Environment names become part of Kubernetes names and folder names."""
    if not is_dns_1035_label(env, MAX_ENV_LENGTH):
        raise ValueError(
            f"environment name {env!r} must be at most {MAX_ENV_LENGTH} lowercase letters, digits "
            "or '-', starting with a letter"
        )
    return env


def kubernetes_name(slug: str, env: str) -> str:
    return f"{slug}-{check_environment_name(env)}"


# KServe names an InferenceService's host from its default domain template
# `{{ .Name }}-{{ .Namespace }}.{{ .IngressDomain }}` with Name `<isvc>-predictor`
# (kserve pkg/apis/serving/v1beta1/configmap.go, constants.PredictorServiceName): the first
# label, `<isvc>-predictor-<namespace>`, must fit 63 characters, so the namespace takes its share.
KSERVE_HOST_INFIX = "-predictor-"
MIN_SERVING_NAME = 20  # what a namespace must leave: a readable stem, a dash and a hash


def serving_name_budget(namespace: str, runtime: str) -> int:
    """The longest object name the runtime can serve in `namespace`."""
    return 63 - len(KSERVE_HOST_INFIX) - len(namespace) if runtime == "kserve" else 63


def check_serving_namespace(namespace: str, runtime: str) -> int:
    """The name budget of `namespace`, refusing one that leaves no room for a readable name."""
    budget = serving_name_budget(namespace, runtime)
    if budget < MIN_SERVING_NAME:
        raise ValueError(f"namespace {namespace!r} is too long for runtime {runtime}: KServe's host "
                         f"<name>-predictor-<namespace> must fit 63 characters, so its namespaces may have at "
                         f"most {63 - len(KSERVE_HOST_INFIX) - MIN_SERVING_NAME} characters")
    return budget


def serving_name(slug: str, env: str, namespace: str, runtime: str) -> str:
    """`<slug>-<env>`, or when that is too long for the namespace, a stem and a hash of it.

    The same model and environment always get the same name, so a new version replaces the old
    object; two names never share a shortened one but by a hash collision.
    """
    name = kubernetes_name(slug, env)
    budget = check_serving_namespace(namespace, runtime)
    if len(name) <= budget:
        return name
    digest = hashlib.sha256(name.encode("utf-8")).hexdigest()[:8]
    return f"{name[:budget - len(digest) - 1].rstrip('-')}-{digest}"
