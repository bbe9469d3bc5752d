"""mlferry's side of bench/artifact_copy.py, in its own process as the publish step runs on Argo.

    python bench/publish_child.py SOURCE_DIR MODEL VERSION
    python -m hera.workflows.runner -e publish_child:publish_folder ARGS_JSON   (from bench/)

Publishes SOURCE_DIR (a ``file:`` source) with ``publish_version`` into $MLFERRY_BUCKET on the
S3 server at $MLFLOW_S3_ENDPOINT_URL, with the object store built exactly as the publish step
builds it, then prints one JSON line: the Publication, the seconds publish_version took, and
this process's own peak RSS (VmHWM), read from /proc/self/status at the end.
"""

import json
import os
import sys
import time
from pathlib import Path


def main() -> int:
    print(json.dumps(publish_folder_figures(*sys.argv[1:4])))
    return 0


def publish_folder(source_dir: str, model: str, version: str) -> str:
    """The same as a Hera runner entry point (`python -m hera.workflows.runner -e
    publish_child:publish_folder ARGS`), which bench/artifact_copy.py forks from a warm server
    (mlferry.engine.warm) as the local executor runs the publish step."""
    return json.dumps(publish_folder_figures(source_dir, model, version))


def publish_folder_figures(source_dir: str, model: str, version: str) -> dict:
    from mlferry.steps.artifacts import open_source
    from mlferry.steps.naming import slugify
    from mlferry.steps.publish import publish_version, publishing_store

    imported = time.perf_counter()
    store = publishing_store(os.environ["MLFERRY_BUCKET"])  # as steps.publish.publish builds it
    publication = publish_version(open_source(Path(source_dir).resolve().as_uri()), store, model, version,
                                  slugify(model))
    seconds = time.perf_counter() - imported
    vmhwm = next(int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines()
                 if line.startswith("VmHWM:"))
    return {"publication": publication.model_dump(), "publish_seconds": seconds, "vmhwm_kb": vmhwm}


if __name__ == "__main__":
    sys.exit(main())
