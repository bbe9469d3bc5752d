"""The arrows point one way: CLI (mlferry/*.py) → workflows, sensors → steps.

Step pods import steps/ only, so steps/ must not pull in Hera workflow builders, the Sensor builder,
the local engine or the CLI; the Argo objects (workflows/, sensors/) are built by the CLI and must not
depend on it. sensors/ may use workflows/ (a trigger submits the promote template), not the reverse.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Import name prefix -> source folder (pyproject.toml's package-dir).
FOLDERS = {"mlferry.steps": "steps", "mlferry.workflows": "workflows", "mlferry.sensors": "sensors",
           "mlferry.engine": "mlferry/engine"}
LAYERS = ("steps", "workflows", "sensors", "engine", "cli")


def layer_of(module: str) -> str | None:
    """The layer an `mlferry…` import belongs to; None for anything outside mlferry."""
    if module != "mlferry" and not module.startswith("mlferry."):
        return None
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in ("steps", "workflows", "sensors", "engine"):
        return parts[1]
    return "cli"  # mlferry itself, mlferry.cli, mlferry.local, …


def imports(path: Path) -> set[str]:
    """Every absolute module a file imports, at any depth (lazy imports inside functions count)."""
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            if node.module == "mlferry":  # `from mlferry import local` imports the module mlferry.local
                found.update(f"mlferry.{alias.name}" for alias in node.names if _is_module("mlferry", alias.name))
    return found


def _is_module(package: str, name: str) -> bool:
    folder = REPO / package
    return (folder / f"{name}.py").exists() or (folder / name / "__init__.py").exists()


def sources(layer: str) -> list[Path]:
    if layer == "cli":  # mlferry/__init__.py is the version only, importable from every layer
        return sorted(p for p in (REPO / "mlferry").glob("*.py") if p.name != "__init__.py")
    folder = FOLDERS[f"mlferry.{layer}"]
    return sorted((REPO / folder).rglob("*.py"))


def edges() -> dict[tuple[str, str], list[str]]:
    """(from layer, to layer) -> the files and imports that make that arrow."""
    found: dict[tuple[str, str], list[str]] = {}
    for layer in LAYERS:
        for path in sources(layer):
            for module in imports(path):
                target = layer_of(module)
                if target is None or target == layer:
                    continue
                # `mlferry` alone (e.g. `from mlferry import __version__`) is the package's version, not the CLI.
                if module == "mlferry":
                    continue
                found.setdefault((layer, target), []).append(f"{path.relative_to(REPO)}: {module}")
    return found


ALLOWED = {
    "steps": set(),
    "workflows": {"steps"},
    "sensors": {"steps", "workflows"},
    "engine": {"steps"},  # the engine runs step processes; reviewed by the engine's owners
    "cli": {"steps", "workflows", "sensors", "engine"},
}


def test_every_arrow_points_down():
    wrong = [where for (source, target), places in edges().items() if target not in ALLOWED[source]
             for where in places]
    assert not wrong, "imports against the layering:\n" + "\n".join(sorted(wrong))


def test_no_cycle_between_folders():
    arrows = {(s, t) for (s, t) in edges()}
    cycles = sorted(f"{a} ↔ {b}" for a, b in arrows if (b, a) in arrows and a < b)
    assert not cycles, cycles


def test_the_package_root_imports_nothing_of_its_own():
    assert not [m for m in imports(REPO / "mlferry" / "__init__.py") if layer_of(m)]


def test_the_checker_sees_imports():
    # A guard against a checker that passes because it finds nothing.
    arrows = edges()
    assert ("workflows", "steps") in arrows and ("sensors", "steps") in arrows and ("cli", "workflows") in arrows
    assert layer_of("mlferry.local") == "cli" and layer_of("mlferry.steps.naming") == "steps"
