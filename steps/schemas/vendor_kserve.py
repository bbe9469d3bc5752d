"""Regenerate kserve-inferenceservice-v1beta1.json from KServe's CRD.

Usage: python steps/schemas/vendor_kserve.py CRD_FILE [--ref KSERVE_COMMIT]

CRD_FILE is config/crd/full/serving.kserve.io_inferenceservices.yaml from kserve/kserve (YAML, or
the same converted to JSON, alone or in a list of documents). The output is that CRD's
v1beta1 openAPIV3Schema with three changes, so that it is small and strict:

- descriptions are dropped (they are most of the size and none of the validation);
- only the parts of the InferenceService that mlferry can render are kept (KEEP below);
  everything else is pruned, so it counts as an unknown field;
- every object schema with ``properties`` gets ``additionalProperties: false`` unless it is
  ``x-kubernetes-preserve-unknown-fields``: the API server would silently drop an unknown
  field, and we would rather hear about it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import yaml

OUTPUT = Path(__file__).with_name("kserve-inferenceservice-v1beta1.json")

# Object path (property names from the root) → the properties kept there. Paths not listed
# keep all their properties. The predictor keeps its pod-level fields and `model`; the
# legacy per-framework predictors, custom `containers`, multi-node `workerSpec`, and the
# transformer/explainer/canary components are pruned: mlferry renders none of them.
KEEP: dict[tuple[str, ...], set[str]] = {
    (): {"apiVersion", "kind", "metadata", "spec"},
    ("spec",): {"predictor"},
}
PRUNE: dict[tuple[str, ...], set[str]] = {
    ("spec", "predictor"): {
        "containers", "initContainers", "workerSpec", "huggingface", "lightgbm", "onnx",
        "paddle", "pmml", "pytorch", "sklearn", "tensorflow", "triton", "xgboost",
    },
}


def inferenceservice_schema(crd_documents: list[dict[str, Any]]) -> dict[str, Any]:
    for doc in crd_documents:
        if (doc or {}).get("kind") != "CustomResourceDefinition":
            continue
        if doc["spec"]["names"]["kind"] != "InferenceService":
            continue
        for version in doc["spec"]["versions"]:
            if version["name"] == "v1beta1":
                return version["schema"]["openAPIV3Schema"]
    raise SystemExit("no InferenceService v1beta1 schema in the given CRD file")


def without_descriptions(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: without_descriptions(v) for k, v in node.items() if k != "description"}
    if isinstance(node, list):
        return [without_descriptions(v) for v in node]
    return node


def pruned(node: dict[str, Any], path: tuple[str, ...] = ()) -> dict[str, Any]:
    props = node.get("properties")
    if not isinstance(props, dict):
        return node
    names = set(props)
    if path in KEEP:
        names &= KEEP[path]
    names -= PRUNE.get(path, set())
    node = dict(node, properties={n: pruned(props[n], path + (n,)) for n in sorted(names)})
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("crd_file", type=Path)
    parser.add_argument("--ref", default="unknown", help="kserve/kserve commit the file comes from")
    args = parser.parse_args()
    text = args.crd_file.read_text()
    documents = json.loads(text) if args.crd_file.suffix == ".json" else list(yaml.safe_load_all(text))
    documents = documents if isinstance(documents, list) else [documents]
    schema = strict(pruned(without_descriptions(inferenceservice_schema(documents))))
    schema["$comment"] = (
        f"Derived from kserve/kserve@{args.ref} config/crd/full/serving.kserve.io_inferenceservices.yaml "
        "(v1beta1 openAPIV3Schema) by steps/schemas/vendor_kserve.py: descriptions dropped, "
        "unused parts pruned, additionalProperties false on every object with properties."
    )
    OUTPUT.write_text(json.dumps(schema, indent=1, sort_keys=True) + "\n")
    print(f"wrote {OUTPUT} ({OUTPUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
