"""docs/cluster.md cannot rot silently: no cluster runs here, so what it can be held to is held here.

The guide installs the components at the minimum versions charts/README.md states, so the two
tables must agree and the commands must install the versions the guide's table names; every
`helm upgrade --install` must name a chart and values files that exist, and render (with the
guide's own `--set`s) into objects as strictly valid as the chart tests' (tests/test_charts.py).
Nothing here reaches a network or a cluster.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest

from mlferry.steps.manifests import parse_documents
from tests.helm import ensure_helm
from tests.test_charts import validate_object

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "docs" / "cluster.md"
COMPONENTS = ("Kubernetes", "Argo Workflows", "Argo Events", "Argo CD")
# Where a command names the version of each component it fetches.
INSTALLED_BY = {
    "Kubernetes": r"kindest/node:(v[0-9.]+)",
    "Argo Workflows": r"argoproj/argo-workflows/releases/download/(v[0-9.]+)/",
    "Argo Events": r"argoproj/argo-events/releases/download/(v[0-9.]+)/",
    "Argo CD": r"argoproj/argo-cd/(v[0-9.]+)/manifests/",
}
# What the guide's shell variables stand for when its helm commands are rendered here.
SAMPLE_VARIABLES = {"GITOPS_REPO": "https://github.com/example/gitops.git"}


def _rows(text: str, columns: int) -> dict[str, list[str]]:
    """Table rows whose first cell names a component: component → the next cells."""
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] in COMPONENTS and len(cells) >= columns:
            rows[cells[0]] = cells[1:columns]
    return rows


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.lstrip("v").split("."))


def shell_lines(text: str) -> list[str]:
    """The commands of the guide's ```sh blocks, continuation lines joined, comments dropped."""
    lines = []
    for block in re.findall(r"^```sh\n(.*?)^```", text, re.M | re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        lines += [re.sub(r"\s+#.*$", "", line).strip() for line in joined.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def test_the_guide_says_it_is_not_run_by_ci():
    head = re.sub(r"\s*\n>?\s*", " ", GUIDE.read_text()[:800])  # one line, without the quote's ">"
    assert "Not run by this repository's CI" in head and re.search(r"checked against upstream docs on \d{4}-\d\d-\d\d", head)


def test_the_guide_installs_the_minimum_versions_of_charts_readme():
    guide = GUIDE.read_text()
    minimum = {name: row[0] for name, row in _rows((ROOT / "charts" / "README.md").read_text(), 2).items()}
    table = _rows(guide, 3)
    assert set(minimum) == set(table) == set(COMPONENTS)
    commands = "\n".join(shell_lines(guide))
    for name, (stated_minimum, installed) in table.items():
        assert stated_minimum == minimum[name], f"{name}: the guide says {stated_minimum}, charts/README.md {minimum[name]}"
        assert _version(installed)[:2] == _version(minimum[name]), f"{name} {installed} is not a {minimum[name]}.x"
        # ... and every command that fetches the component fetches exactly that version.
        fetched = re.findall(INSTALLED_BY[name], commands)
        assert fetched and set(fetched) == {installed}, f"{name}: the table says {installed}, the commands fetch {fetched}"


def helm_installs(text: str) -> list[list[str]]:
    """[release, chart, option…] of each `helm install` / `helm upgrade --install`."""
    commands = [shlex.split(line) for line in shell_lines(text) if line.startswith("helm ")]
    return [c[2:] if c[1] == "install" else c[3:] for c in commands
            if c[1] == "install" or c[1:3] == ["upgrade", "--install"]]


def test_the_guide_installs_both_charts():
    assert {chart for _, chart, *_ in helm_installs(GUIDE.read_text())} == {"charts/team-workspace", "charts/mlferry"}


@pytest.mark.parametrize("command", helm_installs(GUIDE.read_text()), ids=lambda c: c[1])
def test_every_helm_install_in_the_guide_renders_strictly_valid_objects(command):
    release, chart, *options = command
    assert (ROOT / chart / "Chart.yaml").is_file(), f"{chart} is not a chart of this repo"
    values = [options[i + 1] for i, option in enumerate(options) if option in ("-f", "--values")]
    assert values, f"helm install {chart} names no values file"
    for path in values:
        assert (ROOT / path).is_file(), f"{path} does not exist"

    def substituted(option: str) -> str:
        names = re.findall(r"\$\{?(\w+)\}?", option)
        assert set(names) <= SAMPLE_VARIABLES.keys(), f"{option!r}: no sample value for {names}"
        return re.sub(r"\$\{?(\w+)\}?", lambda m: SAMPLE_VARIABLES[m.group(1)], option)

    result = subprocess.run([str(ensure_helm()), "template", release, chart, *map(substituted, options)],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    docs = parse_documents(result.stdout, f"docs/cluster.md: helm install {chart}")
    assert docs
    for doc in docs:
        validate_object(doc, f"docs/cluster.md: {chart}")


def test_the_install_guides_link_the_guide():
    assert "](docs/cluster.md)" in (ROOT / "README.md").read_text()
    assert "](../docs/cluster.md)" in (ROOT / "charts" / "README.md").read_text()
