"""Regenerate the strict CRD schemas the chart tests validate against.

Usage: python tests/schemas/vendor_crds.py ARGO_CD_CRDS --ref ARGO_CD_COMMIT

ARGO_CD_CRDS is argoproj/argo-cd's manifests/crds/ (the AppProject and ApplicationSet CRDs), as
YAML documents or converted to a JSON list. Each output is that CRD's storage version's
openAPIV3Schema, made small and strict the same way steps/schemas/vendor_kserve.py does it:

- descriptions are dropped (most of the size, none of the validation);
- parts the charts never render are pruned (PRUNE below), so using them is an unknown field;
- every object schema with ``properties`` gets ``additionalProperties: false`` unless it is
  ``x-kubernetes-preserve-unknown-fields``: Argo CD's API server would silently drop an
  unknown field, and a typo in a sync policy would ship as "no sync policy".

The Istio AuthorizationPolicy schema next to it was reduced by hand the same way (see README.md).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import yaml

from mlferry.steps.schemas.vendor_kserve import strict  # the same closing rule for every vendored schema

HERE = Path(__file__).resolve().parent

# kind → output file, and object paths (property names from the root) whose listed
# properties are pruned. The ApplicationSet keeps only the git generator (the chart's only
# one) and a single-source Application template; matrix/merge generators nest the whole
# generator schema again and are most of the CRD.
OUTPUTS = {
    "AppProject": ("argocd-appproject-v1alpha1.json", {}),
    "ApplicationSet": ("argocd-applicationset-v1alpha1.json", {
        ("spec", "generators", "[]"): {
            "clusterDecisionResource", "clusters", "list", "matrix", "merge", "plugin", "pullRequest",
            "scmProvider", "selector"},
        ("spec", "template", "spec"): {"sources", "sourceHydrator"},
    }),
}


def storage_schema(documents: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    for doc in documents:
        if (doc or {}).get("kind") == "CustomResourceDefinition" and doc["spec"]["names"]["kind"] == kind:
            for version in doc["spec"]["versions"]:
                if version.get("storage"):
                    return version["schema"]["openAPIV3Schema"]
    raise SystemExit(f"no {kind} CRD in the given file")


def without_descriptions(node: Any, in_properties: bool = False) -> Any:
    """Drop the `description` keyword, not a property that happens to be called so (an
    AppProject has a `description` field)."""
    if isinstance(node, dict):
        return {k: without_descriptions(v, k == "properties" and not in_properties)
                for k, v in node.items() if in_properties or k != "description"}
    if isinstance(node, list):
        return [without_descriptions(v) for v in node]
    return node


def pruned(node: dict[str, Any], prune: dict[tuple[str, ...], set[str]], path: tuple[str, ...] = ()) -> dict[str, Any]:
    if node.get("type") == "array" and isinstance(node.get("items"), dict):
        return dict(node, items=pruned(node["items"], prune, path + ("[]",)))
    props = node.get("properties")
    if not isinstance(props, dict):
        return node
    names = set(props) - prune.get(path, set())
    node = dict(node, properties={n: pruned(props[n], prune, path + (n,)) for n in sorted(names)})
    if "required" in node:
        node["required"] = [n for n in node["required"] if n in names]
    return node


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("crd_file", type=Path)
    parser.add_argument("--ref", default="unknown", help="argoproj/argo-cd commit the file comes from")
    args = parser.parse_args()
    text = args.crd_file.read_text()
    documents = json.loads(text) if args.crd_file.suffix == ".json" else list(yaml.safe_load_all(text))
    for kind, (file_name, prune) in OUTPUTS.items():
        schema = storage_schema(documents, kind)
        schema = strict(pruned(without_descriptions(schema), prune))
        schema["$comment"] = (f"Derived from argoproj/argo-cd@{args.ref} manifests/crds ({kind}, storage version) by "
                              "tests/schemas/vendor_crds.py: descriptions dropped, unused parts pruned, "
                              "additionalProperties false on every object with properties.")
        out = HERE / file_name
        out.write_text(json.dumps(schema, indent=1, sort_keys=True) + "\n")
        print(f"wrote {out} ({out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
