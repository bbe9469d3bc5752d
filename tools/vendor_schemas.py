"""Regenerate the vendored CRD schemas: small and strict copies of upstream CRDs' openAPIV3Schema.

A maintainer tool, not part of the product (the wheel ships only the JSON it writes):

    python tools/vendor_schemas.py kserve serving.kserve.io_inferenceservices.yaml --ref KSERVE_COMMIT
    python tools/vendor_schemas.py argocd ARGO_CD_CRDS --ref ARGO_CD_COMMIT

`kserve` writes steps/schemas/ (render validates against it); `argocd` writes tests/schemas/ (the
chart tests do). Input is YAML documents or a JSON list. Every schema is reduced the same way:

- `description` keywords are dropped (most of the size, none of the validation);
- parts mlferry never renders are pruned (KEEP/PRUNE below), so using them is an unknown field;
- every object schema with `properties` gets `additionalProperties: false` unless it is
  `x-kubernetes-preserve-unknown-fields`: the API server would silently drop an unknown field.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
Paths = dict[tuple[str, ...], set[str]]  # object path (property names, "[]" for array items) -> names

# KServe: the predictor keeps its pod-level fields and `model`; the legacy per-framework
# predictors, custom `containers`, multi-node `workerSpec`, and the transformer/explainer/canary
# components are pruned: mlferry renders none of them.
KSERVE_KEEP: Paths = {
    (): {"apiVersion", "kind", "metadata", "spec"},
    ("spec",): {"predictor"},
}
KSERVE_PRUNE: Paths = {
    ("spec", "predictor"): {
        "containers", "initContainers", "workerSpec", "huggingface", "lightgbm", "onnx",
        "paddle", "pmml", "pytorch", "sklearn", "tensorflow", "triton", "xgboost",
    },
}
KSERVE_OUTPUT = REPO / "steps" / "schemas" / "kserve-inferenceservice-v1beta1.json"

# Argo CD: kind -> (output file, pruned paths). The ApplicationSet keeps only the git generator
# (the chart's only one) and a single-source Application template; matrix/merge generators nest
# the whole generator schema again and are most of the CRD.
ARGOCD_OUTPUTS: dict[str, tuple[str, Paths]] = {
    "AppProject": ("argocd-appproject-v1alpha1.json", {}),
    "ApplicationSet": ("argocd-applicationset-v1alpha1.json", {
        ("spec", "generators", "[]"): {
            "clusterDecisionResource", "clusters", "list", "matrix", "merge", "plugin", "pullRequest",
            "scmProvider", "selector"},
        ("spec", "template", "spec"): {"sources", "sourceHydrator"},
    }),
    # The Application keeps its status (steps/argocd_status.py reads sync, health, operationState
    # and conditions from it; its tests validate Applications with status). Multi-source and
    # hydrator fields are pruned, wherever they recur, as in the ApplicationSet's template: the
    # Applications it makes have a single `source` and no hydrator.
    "Application": ("argocd-application-v1alpha1.json", {
        ("spec",): {"sources", "sourceHydrator"},
        ("operation", "sync"): {"sources"},
        ("status",): {"sourceHydrator"},
        ("status", "history", "[]"): {"sources"},
        ("status", "operationState", "operation", "sync"): {"sources"},
        ("status", "operationState", "syncResult"): {"sources"},
        ("status", "sync", "comparedTo"): {"sources"},
    }),
}
ARGOCD_FOLDER = REPO / "tests" / "schemas"


def crd_schema(documents: list[dict[str, Any]], kind: str, version: str | None = None) -> dict[str, Any]:
    """The openAPIV3Schema of `kind`'s CRD: of the named version, or of its storage version."""
    for doc in documents:
        if (doc or {}).get("kind") != "CustomResourceDefinition" or doc["spec"]["names"]["kind"] != kind:
            continue
        for served in doc["spec"]["versions"]:
            if served["name"] == version if version else served.get("storage"):
                return served["schema"]["openAPIV3Schema"]
    raise SystemExit(f"no {kind} {version or 'storage version'} schema in the given file")


def without_descriptions(node: Any, in_properties: bool = False) -> Any:
    """Drop the `description` keyword, not a property that happens to be called so (an AppProject
    has a `description` field)."""
    if isinstance(node, dict):
        return {k: without_descriptions(v, k == "properties" and not in_properties)
                for k, v in node.items() if in_properties or k != "description"}
    if isinstance(node, list):
        return [without_descriptions(v) for v in node]
    return node


def pruned(node: dict[str, Any], prune: Paths, keep: Paths | None = None,
           path: tuple[str, ...] = ()) -> dict[str, Any]:
    keep = keep or {}
    if node.get("type") == "array" and isinstance(node.get("items"), dict):
        return dict(node, items=pruned(node["items"], prune, keep, path + ("[]",)))
    props = node.get("properties")
    if not isinstance(props, dict):
        return node
    names = set(props)
    if path in keep:
        names &= keep[path]
    names -= prune.get(path, set())
    node = dict(node, properties={n: pruned(props[n], prune, keep, path + (n,)) for n in sorted(names)})
    if "required" in node:
        node["required"] = [n for n in node["required"] if n in names]
    return node


def strict(node: Any) -> Any:
    if isinstance(node, dict):
        node = {k: strict(v) for k, v in node.items()}
        if (
            "properties" in node
            and "additionalProperties" not in node
            and not node.get("x-kubernetes-preserve-unknown-fields")
        ):
            node["additionalProperties"] = False
        return node
    if isinstance(node, list):
        return [strict(v) for v in node]
    return node


def reduced(schema: dict[str, Any], prune: Paths, keep: Paths | None, comment: str) -> dict[str, Any]:
    schema = strict(pruned(without_descriptions(schema), prune, keep))
    schema["$comment"] = (f"{comment} by tools/vendor_schemas.py: descriptions dropped, unused parts pruned, "
                          "additionalProperties false on every object with properties.")
    return schema


def write(path: Path, schema: dict[str, Any]) -> None:
    path.write_text(json.dumps(schema, indent=1, sort_keys=True) + "\n")
    print(f"wrote {path} ({path.stat().st_size} bytes)")


def read_documents(path: Path) -> list[dict[str, Any]]:
    text = path.read_text()
    documents = json.loads(text) if path.suffix == ".json" else list(yaml.safe_load_all(text))
    return documents if isinstance(documents, list) else [documents]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", choices=("kserve", "argocd"))
    parser.add_argument("crd_file", type=Path)
    parser.add_argument("--ref", default="unknown", help="the upstream commit the file comes from")
    args = parser.parse_args()
    documents = read_documents(args.crd_file)
    if args.source == "kserve":
        schema = crd_schema(documents, "InferenceService", "v1beta1")
        write(KSERVE_OUTPUT, reduced(schema, KSERVE_PRUNE, KSERVE_KEEP,
                                     f"Derived from kserve/kserve@{args.ref} config/crd/full/"
                                     "serving.kserve.io_inferenceservices.yaml (v1beta1 openAPIV3Schema)"))
        return
    for kind, (file_name, prune) in ARGOCD_OUTPUTS.items():
        schema = crd_schema(documents, kind)
        write(ARGOCD_FOLDER / file_name, reduced(schema, prune, None, f"Derived from argoproj/argo-cd@{args.ref} "
                                                 f"manifests/crds ({kind}, storage version)"))


if __name__ == "__main__":
    main()
