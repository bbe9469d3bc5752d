"""The product installs under one import name, `mlferry`: nothing generic in site-packages."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    # -I: no cwd, no PYTHON* variables; only what the venv installed is importable.
    return subprocess.run([sys.executable, "-I", "-c", code], cwd=cwd, capture_output=True, text=True)


def test_installed_names_are_under_mlferry_only(tmp_path):
    for generic in ("steps", "workflows", "sensors", "engine"):
        done = _python(f"import {generic}", tmp_path)
        assert done.returncode != 0 and "No module named" in done.stderr, generic
    done = _python("import mlferry.steps.resolve, mlferry.workflows.promote, mlferry.sensors.objects, "
                   "mlferry.engine; print(mlferry.steps.resolve.resolve.__module__)", tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "mlferry.steps.resolve"


def test_the_wheel_has_one_top_level_package(tmp_path):
    # From a copy of what git tracks: an in-tree build/ keeps files that were since deleted.
    source = tmp_path / "src"
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    for name in filter(None, tracked.decode().split("\0")):
        if (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path), str(source)], check=True, capture_output=True, cwd=tmp_path)
    (wheel,) = tmp_path.glob("mlferry-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert tops == {"mlferry"}
    assert "mlferry/steps/templates/deployment/deployment.yaml.j2" in names
    assert "mlferry/steps/schemas/kserve-inferenceservice-v1beta1.json" in names
    assert "mlferry/steps/gitops/publish.py" in names  # a subpackage needs its own packaging lines
    # maintainer and test tools stay in the repo: the product ships only the product
    assert not [n for n in names if n.endswith("/vendor_kserve.py") or n == "mlferry/tools.py"]


def test_no_tracked_file_holds_a_merge_conflict_marker():
    """A merge resolved by `git add` alone once left markers in the README; none may land again."""
    import re

    marker = re.compile("^(" + "<" * 7 + "|" + ">" * 7 + ") ", re.M)
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    found = [path for path in tracked.split("\n") if path and (REPO / path).is_file()
             and marker.search((REPO / path).read_text(errors="replace"))]
    assert found == []
