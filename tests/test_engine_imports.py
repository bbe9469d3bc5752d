"""The local engine knows Argo, not promotions: its modules import the standard library, yaml,
jsonschema, Hera and each other, and nothing else of mlferry (no steps, workflows, sensors, CLI)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ENGINE = Path(__file__).resolve().parents[1] / "mlferry" / "engine"
THIRD_PARTY = {"yaml", "jsonschema", "hera"}


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # `from mlferry import steps` imports mlferry.steps: name what is imported
            names += [f"{node.module}.{a.name}" for a in node.names] if node.module == "mlferry" else [node.module]
        elif isinstance(node, ast.ImportFrom):
            names.append(f"mlferry.engine.{node.module or ''}")  # relative: inside the engine
    return names


def _allowed(name: str) -> bool:
    top = name.split(".")[0]
    if top == "mlferry":
        return name == "mlferry.engine" or name.startswith("mlferry.engine.")
    return top in sys.stdlib_module_names or top in THIRD_PARTY or top == "__future__"


def test_engine_modules_import_nothing_of_mlferry_outside_the_engine():
    modules = sorted(ENGINE.glob("*.py"))
    assert len(modules) > 10
    wrong = {f"{m.name}: {name}" for m in modules for name in _imports(m) if not _allowed(name)}
    assert not wrong, sorted(wrong)


def test_the_check_itself_sees_a_forbidden_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from mlferry.steps import plan\nfrom mlferry import cli\nimport mlferry.workflows.promote\n"
                   "from mlferry.engine.scope import Names\nimport requests\n")
    assert [n for n in _imports(bad) if not _allowed(n)] == [
        "mlferry.steps", "mlferry.cli", "mlferry.workflows.promote", "requests"]
