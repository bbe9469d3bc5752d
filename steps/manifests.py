"""Strict validation of the Kubernetes manifests mlferry writes (and the charts ship).

Strict means an unknown field anywhere is an error. The API server prunes unknown fields of
custom resources without a word, and ``kubectl apply`` only warns for core kinds, so a typo in a
template would otherwise ship as a setting that silently does nothing.

- core kinds: kubernetes-validate's strict schemas for one pinned Kubernetes version;
- ``InferenceService``: KServe's own CRD schema, vendored and made strict (schemas/README.md);
- ``Kustomization``: a small strict schema written from kustomize's types;
- on top of the schemas, what they do not say: names, label and annotation syntax, and that
  no container carries a literal credential.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Any, Iterator, Mapping

import jsonschema
import kubernetes_validate
import yaml

from mlferry.steps.naming import (KSERVE_HOST_INFIX, is_dns_1035_label, is_dns_label, is_dns_subdomain, is_label_value,
                                  is_qualified_key)

# The oldest Kubernetes mlferry supports. A strict schema of an older version rejects fields
# that only newer clusters know, so what passes here applies on every supported cluster.
KUBERNETES_VERSION = "1.33"

SCHEMAS = Path(__file__).with_name("schemas")
KUSTOMIZATION = "kustomization.yaml"
KUSTOMIZE_API = "kustomize.config.k8s.io/v1beta1"
KSERVE_API = "serving.kserve.io/v1beta1"

# Kinds whose names become DNS labels that must start with a letter (Services become DNS
# names; KServe's admission webhook enforces the same for InferenceServices).
_DNS_1035_KINDS = {"Service", "InferenceService"}
_KSERVE_PREDICTOR_SUFFIX = "-predictor"
# The API server's limit on all annotations of one object together (keys and values, bytes).
_ANNOTATIONS_MAX_BYTES = 256 * 1024
# Environment variables whose literal value would be a credential in git.
_CREDENTIAL_NAME = re.compile(r"SECRET|PASSWORD|PASSWD|TOKEN|ACCESS_KEY|PRIVATE_KEY|CREDENTIAL", re.I)


class ManifestError(ValueError):
    """A manifest would not be accepted as written; the message names file, object and field."""


# ---------------------------------------------------------------------------------------------
# entry points


def validate_documents(text: str, source: str) -> list[dict[str, Any]]:
    """Parse a (multi-document) YAML text and validate every object in it; returns them."""
    documents = parse_documents(text, source)
    for doc in documents:
        validate_manifest(doc, source)
    return documents


def validate_manifest(doc: Mapping[str, Any], source: str) -> None:
    """Raise ManifestError unless `doc` is an object the cluster would accept exactly as written."""
    if not isinstance(doc, Mapping):
        raise ManifestError(f"{source}: a manifest must be a mapping, not {type(doc).__name__}")
    problems = _schema_problems(doc)
    if doc.get("kind") != "Kustomization":
        problems += _name_problems(doc) + _label_problems(doc) + _credential_problems(doc)
    if problems:
        raise ManifestError(f"{source}: {object_name(doc)}: " + "; ".join(problems))


def validate_folder(files: Mapping[str, str], folder: str) -> None:
    """A GitOps folder: valid files, one kustomization listing exactly the other files, every
    object in the kustomization's namespace, and no Secret (manifests only reference them)."""
    if KUSTOMIZATION not in files:
        raise ManifestError(f"{folder}: no {KUSTOMIZATION}")
    parsed = {name: validate_documents(text, f"{folder}/{name}") for name, text in files.items()}
    kustomizations = parsed[KUSTOMIZATION]
    if len(kustomizations) != 1 or kustomizations[0].get("kind") != "Kustomization":
        raise ManifestError(f"{folder}/{KUSTOMIZATION}: must hold exactly one Kustomization")
    kustomization = kustomizations[0]
    _check_resources_listed(kustomization, set(files) - {KUSTOMIZATION}, folder)
    for name, documents in parsed.items():
        for doc in documents:
            _check_folder_object(doc, kustomization.get("namespace"), f"{folder}/{name}")


def parse_documents(text: str, source: str) -> list[dict[str, Any]]:
    try:
        documents = [d for d in yaml.load_all(text, Loader=_StrictLoader) if d is not None]
    except yaml.YAMLError as err:
        raise ManifestError(f"{source}: not valid YAML: {err}") from None
    for doc in documents:
        if not isinstance(doc, dict):
            raise ManifestError(f"{source}: a document is a {type(doc).__name__}, not a mapping")
    return documents


def object_name(doc: Mapping[str, Any]) -> str:
    metadata = doc.get("metadata") if isinstance(doc.get("metadata"), Mapping) else {}
    return f"{doc.get('kind', '?')}/{metadata.get('name') or metadata.get('generateName') or '?'}"


# ---------------------------------------------------------------------------------------------
# YAML that means exactly one thing


class _StrictLoader(yaml.SafeLoader):
    """Safe loading, but duplicate keys and non-string keys are errors: PyYAML keeps the last of
    two equal keys and Kubernetes' parser may keep another, and `on:` or `1:` keys would not
    mean what they look like."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *anchor` may legitimately be overridden by the mapping's own keys
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, str):
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is not a string", key_node.start_mark)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)



# ---------------------------------------------------------------------------------------------
# schemas


def _schema_problems(doc: Mapping[str, Any]) -> list[str]:
    api_version, kind = doc.get("apiVersion"), doc.get("kind")
    if not isinstance(api_version, str) or not isinstance(kind, str):
        return ["apiVersion and kind must be strings"]
    if kind == "Kustomization":
        return _jsonschema_problems(_vendored_schema("kustomization.json"), doc)
    if (api_version, kind) == (KSERVE_API, "InferenceService"):
        # The CRD schema says only `metadata: {type: object}`; the API server checks metadata
        # as ObjectMeta, so we do too, carried by the smallest core kind that has one.
        carrier = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": doc.get("metadata", {})}
        return _jsonschema_problems(_vendored_schema("kserve-inferenceservice-v1beta1.json"), doc) + (
            _core_problems(carrier))
    return _core_problems(doc)


def _core_problems(doc: Mapping[str, Any]) -> list[str]:
    try:
        kubernetes_validate.validate(dict(doc), KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as err:
        return _describe(err)
    except kubernetes_validate.SchemaNotFoundError:
        return [f"no Kubernetes {KUBERNETES_VERSION} schema for {doc['apiVersion']} {doc['kind']}, and no "
                "vendored one (steps/schemas has InferenceService and Kustomization)"]
    return []


@functools.cache
def _vendored_schema(file_name: str) -> jsonschema.Draft7Validator:
    schema = json.loads((SCHEMAS / file_name).read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def _jsonschema_problems(validator: jsonschema.Draft7Validator, doc: Mapping[str, Any]) -> list[str]:
    errors = sorted(validator.iter_errors(doc), key=lambda e: [str(p) for p in e.absolute_path])
    return [problem for error in errors for problem in _describe(error)]


def _describe(error: jsonschema.ValidationError) -> list[str]:
    """One line per problem, with the field path spelled as in kubectl (a.b[0].c)."""
    path = list(error.absolute_path)
    if error.validator == "additionalProperties" and isinstance(error.instance, Mapping):
        known = set(error.schema.get("properties", {}))
        return [f"{field_path(path + [k])}: unknown field" for k in sorted(error.instance) if k not in known]
    return [f"{field_path(path) or '(root)'}: {error.message[:300]}"]


def field_path(parts: list[Any]) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


# ---------------------------------------------------------------------------------------------
# what the schemas do not say


def _name_problems(doc: Mapping[str, Any]) -> list[str]:
    metadata = doc.get("metadata")
    if not isinstance(metadata, Mapping):
        return ["metadata: required"] if metadata is None else []  # a non-mapping: the schema said so
    name, namespace = metadata.get("name"), metadata.get("namespace")
    problems = []
    if name is None and not metadata.get("generateName"):
        problems.append("metadata.name: required")
    elif name is not None:
        problems += _object_name_problems(doc["kind"], name)
        if doc["kind"] == "InferenceService" and namespace and len(host := name + KSERVE_HOST_INFIX + namespace) > 63:
            problems.append(f"metadata.name: {name!r} is too long for namespace {namespace!r}: KServe's host label "
                            f"'{host}' has {len(host)} characters, at most 63 allowed")
    if namespace is not None and not is_dns_label(namespace):
        problems.append(f"metadata.namespace: {namespace!r} is not a DNS-1123 label")
    return problems


def _object_name_problems(kind: str, name: str) -> list[str]:
    if kind == "InferenceService" and len(name) > 63 - len(_KSERVE_PREDICTOR_SUFFIX):
        return [f"metadata.name: {name!r} is longer than {63 - len(_KSERVE_PREDICTOR_SUFFIX)} characters; "
                f"KServe names the predictor's Service '<name>{_KSERVE_PREDICTOR_SUFFIX}', a DNS label of at most 63"]
    if kind in _DNS_1035_KINDS:
        if not is_dns_1035_label(name):
            return [f"metadata.name: {name!r} is not a DNS-1035 label (a {kind} name must start "
                    "with a letter, then lowercase letters, digits or '-', at most 63 characters)"]
    elif not is_dns_subdomain(name):
        return [f"metadata.name: {name!r} is not a DNS-1123 subdomain"]
    return []


def _label_problems(doc: Mapping[str, Any]) -> list[str]:
    problems = []
    for path, key, value in _walk(doc):
        if not isinstance(value, Mapping):
            continue
        in_metadata = bool(path) and path[-1] == "metadata"
        service_selector = doc.get("kind") == "Service" and path == ["spec"] and key == "selector"
        if (in_metadata and key == "labels") or key == "matchLabels" or service_selector:
            problems += _label_map_problems(path + [key], value)
        elif in_metadata and key == "annotations":
            problems += _annotation_map_problems(path + [key], value)
    return problems


def _label_map_problems(path: list[Any], labels: Mapping[str, Any]) -> list[str]:
    problems = []
    for key, value in labels.items():
        where = f"{field_path(path)}[{key}]"
        if not is_qualified_key(key):
            problems.append(f"{where}: invalid label key")
        if not (isinstance(value, str) and is_label_value(value)):
            problems.append(f"{where}: {str(value)[:80]!r} is not a valid label value "
                            "(at most 63 letters, digits, '-', '_' or '.', alphanumeric at both ends)")
    return problems


def _annotation_map_problems(path: list[Any], annotations: Mapping[str, Any]) -> list[str]:
    problems = [f"{field_path(path)}[{k}]: invalid annotation key" for k in annotations if not is_qualified_key(k)]
    size = sum(len(k.encode()) + len(str(v).encode()) for k, v in annotations.items())
    if size > _ANNOTATIONS_MAX_BYTES:
        problems.append(f"{field_path(path)}: {size} bytes, over the API server's limit of {_ANNOTATIONS_MAX_BYTES}")
    return problems


def _credential_problems(doc: Mapping[str, Any]) -> list[str]:
    problems = []
    for path, key, value in _walk(doc):
        if key != "env" or not isinstance(value, list):
            continue
        for index, var in enumerate(value):
            if isinstance(var, Mapping) and var.get("value") and _CREDENTIAL_NAME.search(str(var.get("name", ""))):
                problems.append(f"{field_path(path + ['env', index])}: {var['name']} has a literal value; "
                                "credentials must come from a Secret (valueFrom.secretKeyRef)")
    return problems


def _walk(node: Any, path: list[Any] | None = None) -> Iterator[tuple[list[Any], Any, Any]]:
    """Every (parent path, key, value) in a document, depth first."""
    path = path or []
    items = node.items() if isinstance(node, Mapping) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        yield path, key, value
        yield from _walk(value, path + [key])


# ---------------------------------------------------------------------------------------------
# folder rules


def _check_resources_listed(kustomization: Mapping[str, Any], files: set[str], folder: str) -> None:
    listed = set(kustomization.get("resources", []))
    if listed - files:
        raise ManifestError(f"{folder}/{KUSTOMIZATION}: resources lists files that are not in the folder: "
                            f"{', '.join(sorted(listed - files))}")
    if files - listed:
        raise ManifestError(f"{folder}/{KUSTOMIZATION}: files missing from resources (Argo CD would not "
                            f"apply them): {', '.join(sorted(files - listed))}")


def _check_folder_object(doc: Mapping[str, Any], namespace: str | None, source: str) -> None:
    if doc.get("kind") == "Secret":
        raise ManifestError(f"{source}: {object_name(doc)}: manifests must reference Secrets, never contain them")
    if doc.get("kind") == "Kustomization":
        return
    if (doc.get("metadata") or {}).get("namespace") != namespace:
        raise ManifestError(f"{source}: {object_name(doc)}: metadata.namespace is "
                            f"{(doc.get('metadata') or {}).get('namespace')!r}, the kustomization says {namespace!r}")
