"""Set mlferry's version everywhere it is written down: one number for the package, both charts
(version and appVersion) and every image tag the repo names.

A maintainer tool, not part of the product:

    python tools/set_version.py 0.2.0        (or: make version V=0.2.0)
    python tools/set_version.py --check      (exit 1, naming each copy that differs)

`mlferry/__init__.py`'s `__version__` is the source. pyproject.toml reads it (a dynamic
version), and so do the defaults in code (`Bundle.image`, `Settings.serving_image`). The files
in PLACES hold copies because Helm, YAML and docs cannot import Python; each is listed with the
exact shape the version takes there, and only that shape is rewritten. The generated Argo YAML
is rewritten the same way, to what `mlferry generate` writes for the new version (a test in
tests/test_workflows.py compares the two). tests/test_charts.py checks that every copy equals
`__version__` and that no file names an mlferry image outside this list.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Chart versions must be SemVer 2 (Helm refuses others), and image tags allow no '+'.
VERSION = re.compile(r"^[0-9]+\.[0-9]+\.[0-9]+(-[0-9A-Za-z.-]+)?$")

# An image of this repo (images/<name>/Dockerfile), by its tag: steps, serving, mlflow.
IMAGE_TAG = r"ghcr\.io/mlferry/mlferry-[a-z]+:(?P<v>[0-9A-Za-z_.-]+)"
CHART = (r"^version: (?P<v>\S+)$", r'^appVersion: "(?P<v>[^"]+)"$')

# file (or glob) → the patterns whose group "v" is the version; each must match at least once
# (in at least one of a glob's files), so a copy that moved or changed shape is an error.
PLACES: dict[str, tuple[str, ...]] = {
    "mlferry/__init__.py": (r'^__version__ = "(?P<v>[^"]+)"$',),
    "charts/mlferry/Chart.yaml": CHART,
    "charts/team-workspace/Chart.yaml": CHART,
    "charts/team-workspace/values.yaml": (IMAGE_TAG,),
    "charts/team-workspace/examples/full-values.yaml": (IMAGE_TAG,),
    "docs/mlferry.example.yaml": (IMAGE_TAG,),
    # Bundle.labels and Bundle.image, as `mlferry generate` wrote them.
    "charts/mlferry/generated/*.yaml": (r"^\s*app\.kubernetes\.io/version: (?P<v>\S+)$", IMAGE_TAG),
}


def files(root: Path) -> list[tuple[Path, tuple[str, ...]]]:
    found = []
    for place, patterns in PLACES.items():
        matched = sorted(root.glob(place))
        if not matched:
            raise SystemExit(f"{place}: no such file under {root}; update PLACES in {Path(__file__).name}")
        found += [(path, patterns) for path in matched]
    return found


def copies(root: Path = REPO) -> list[tuple[str, int, str]]:
    """Every written copy of the version: (file relative to root, line, version)."""
    result = []
    for place, patterns in PLACES.items():
        for pattern in patterns:
            found = [(str(path.relative_to(root)), text.count("\n", 0, m.start("v")) + 1, m.group("v"))
                     for path in sorted(root.glob(place)) for text in [path.read_text()]
                     for m in re.finditer(pattern, text, re.M)]
            if not found:
                raise SystemExit(f"{place}: no version of the shape {pattern!r}; update PLACES in {Path(__file__).name}")
            result += found
    return result


def set_version(version: str, root: Path = REPO) -> list[Path]:
    """Write `version` into every place; returns the files that changed."""
    if not VERSION.match(version):
        raise SystemExit(f"{version!r} is not a version Helm and image tags both accept (MAJOR.MINOR.PATCH[-pre])")
    changed = []
    for path, patterns in files(root):
        text = original = path.read_text()
        for pattern in patterns:
            text = re.sub(pattern, lambda m: m.group(0)[:m.start("v") - m.start()] + version
                          + m.group(0)[m.end("v") - m.start():], text, flags=re.M)
        if text != original:
            path.write_text(text)
            changed.append(path)
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("version", nargs="?", help="the new version, e.g. 0.2.0")
    parser.add_argument("--check", action="store_true", help="only report copies that differ from __version__")
    parser.add_argument("--root", type=Path, default=REPO, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.check == bool(args.version):
        parser.error("give a version, or --check")
    if args.check:
        found = copies(args.root)
        source = next(v for f, _, v in found if f == "mlferry/__init__.py")
        stale = [f"{f}:{line}: {v}" for f, line, v in found if v != source]
        for entry in stale:
            print(f"{entry} (mlferry.__version__ is {source})", file=sys.stderr)
        return 1 if stale else 0
    for path in set_version(args.version, args.root):
        print(path.relative_to(args.root))
    return 0


if __name__ == "__main__":
    sys.exit(main())
