"""Reconcile: the registry's aliases and stages against the GitOps repo, through the executor."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from mlferry.steps.gitops import Snapshot
from mlferry.steps.naming import slugify
from mlferry.steps import rule
from mlferry.steps.plan import Deployed, deployed_state, plan_changes
from mlferry.steps.registry import RegisteredModelView
from mlferry.steps.settings import load_settings
from tests.conftest import git_log

ROOT = Path(__file__).resolve().parent.parent


def reconcile(stack_dir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mlferry.cli", "reconcile", "--stack-dir", str(stack_dir),
                           "--config", str(stack_dir / "mlferry.yaml"), *args],
                          capture_output=True, text=True, timeout=600, cwd=ROOT, env=dict(os.environ))


@pytest.fixture
def aliases(tmp_path, unique_name) -> dict[str, str]:
    """Aliases only this test uses, so the session's other models stay out of its reconcile."""
    names = {"production": f"prod-{unique_name[-8:]}", "staging": f"stage-{unique_name[-8:]}"}
    (tmp_path / "mlferry.yaml").write_text(
        f"environments:\n  production: {{aliases: [{names['production']}], stages: [Production]}}\n"
        f"  staging: {{aliases: [{names['staging']}]}}\n")
    return names


def folders(remote: Path) -> set[str]:
    out = subprocess.run(["git", "--git-dir", str(remote), "ls-tree", "-r", "--name-only", "main", "teams/"],
                         capture_output=True, text=True, check=True).stdout
    return {"/".join(line.split("/")[:4]) for line in out.splitlines()}


def test_reconcile_promotes_what_git_lacks_and_prunes_a_removed_alias(registered_model, gitops_remote, tmp_path,
                                                                      unique_name, aliases):
    a, va = registered_model(f"{unique_name}-a", alias=aliases["production"])
    b, vb = registered_model(f"{unique_name}-b", alias=aliases["staging"])
    c, vc = registered_model(f"{unique_name}-c")
    MlflowClient().transition_model_version_stage(c, vc, "Production")  # legacy: fires no webhook

    first = reconcile(tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    expected = {f"teams/ml/{slugify(a)}/production", f"teams/ml/{slugify(b)}/staging",
                f"teams/ml/{slugify(c)}/production"}
    assert expected <= folders(gitops_remote)
    assert "promote(0:" in first.stdout and "prune" in first.stdout

    # Nothing changed: the second run promotes nothing and commits nothing.
    commits = git_log(gitops_remote, "--format=%H")
    second = reconcile(tmp_path)
    assert second.returncode == 0, second.stdout + second.stderr
    assert git_log(gitops_remote, "--format=%H") == commits

    # The alias is gone: the folder goes, in one commit that says why.
    MlflowClient().delete_registered_model_alias(b, aliases["staging"])
    third = reconcile(tmp_path)
    assert third.returncode == 0, third.stdout + third.stderr
    assert f"teams/ml/{slugify(b)}/staging" not in folders(gitops_remote)
    assert f"teams/ml/{slugify(a)}/production" in folders(gitops_remote)
    new = git_log(gitops_remote, "--format=%s%n%b", f"{commits.split()[0]}..main")
    assert f"remove {b} v{vb} from staging" in new and "Trigger: reconcile" in new
    assert MlflowClient().get_model_version(b, vb).tags["mlferry.staging.status"] == "retired"
    assert f"prune    {b} v{vb} from staging: no alias or stage selects a version" in third.stdout


def test_prune_false_keeps_folders(registered_model, gitops_remote, tmp_path, aliases):
    name, _ = registered_model(alias=aliases["staging"])
    assert reconcile(tmp_path).returncode == 0
    MlflowClient().delete_registered_model_alias(name, aliases["staging"])
    result = reconcile(tmp_path, "--prune", "false")
    assert result.returncode == 0
    assert f"teams/ml/{slugify(name)}/staging" in folders(gitops_remote)


def test_an_alias_wins_over_a_stage_and_unconfigured_aliases_are_ignored():
    settings = load_settings(environ={})
    models = [RegisteredModelView("m", {"production": "3", "canary": "4"}, {"Production": "2", "Staging": "1"})]
    found = rule.selections(models, settings)
    assert {key: chosen.version for key, chosen in found.items()} == {("m", "production"): "3", ("m", "staging"): "1"}


def test_the_plan_promotes_changes_only_and_prunes_only_when_asked():
    settings = load_settings(environ={})
    desired = {("a", "production"): rule.Selection("2"), ("b", "staging"): rule.Selection("1")}
    deployed = {("a", "production"): Deployed("a", "1", "teams/ml/a/production"),
                ("b", "staging"): Deployed("b", "1", "teams/ml/b/staging"),
                ("gone", "staging"): Deployed("gone", "5", "teams/ml/gone/staging")}
    plan = plan_changes(desired, deployed, settings, prune=True)
    assert plan.promotions == [{"model": "a", "version": "2", "env": "production", "was": "1"}]
    assert plan.removals == [{"model": "gone", "version": "5", "env": "staging", "folder": "teams/ml/gone/staging",
                              "why": "no alias or stage selects a version"}]
    assert plan.unchanged == 1
    assert plan_changes(desired, deployed, settings, prune=False).removals == []


# The quick reading of a folder's annotations (plan._annotations_read_ahead) against loading the
# whole file: equal wherever it answers, and it hands every case it is not sure of (None) to yaml.load.
ANNOTATION_CASES = {
    "as render writes it": ('# Written by mlferry\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: "w"\n'
                            '  annotations:\n    "mlferry.io/model-name": "Wine Q"\n    "mlferry.io/version": "4"\n'
                            'spec:\n  replicas: 1\n', "quick"),
    "plain strings, flow style": ('metadata: {annotations: {mlferry.io/model-name: wine, mlferry.io/version: "2"}}\n',
                                  "quick"),
    "metadata after spec": ('spec: {a: [1, {b: c}]}\nmetadata:\n  annotations: {mlferry.io/model-name: m}\n', "quick"),
    "in the second document": ('kind: A\nmetadata: {name: x}\n---\nmetadata:\n  annotations:\n'
                               '    mlferry.io/model-name: m\n    mlferry.io/version: "3"\n', "quick"),
    "not a model's": ('metadata:\n  annotations: {a: b}\n', "quick"),
    "empty file": ("", "quick"),
    "a number, not a string": ('metadata:\n  annotations:\n    mlferry.io/model-name: m\n    mlferry.io/version: 2\n',
                               "load"),
    "no value": ('metadata:\n  annotations:\n    mlferry.io/model-name:\n', "load"),
    "an alias": ('x: &a {mlferry.io/model-name: m}\nmetadata:\n  annotations: *a\n', "load"),
    "a merge key": ('metadata:\n  annotations:\n    <<: {mlferry.io/model-name: m}\n    mlferry.io/version: "1"\n',
                    "load"),
    "a tag": ('metadata:\n  annotations:\n    mlferry.io/model-name: !!str 12\n', "load"),
    "annotations twice": ('metadata:\n  annotations: {mlferry.io/model-name: m}\n'
                          '  annotations: {mlferry.io/model-name: n}\n', "load"),
    "a key twice": ('metadata:\n  annotations: {mlferry.io/model-name: m, mlferry.io/model-name: n}\n', "load"),
    "a list, not a mapping": ("- a\n- b\n", "load"),
}


@pytest.mark.parametrize("case", sorted(ANNOTATION_CASES))
def test_folder_annotations_read_quickly_agree_with_loading_the_file(case):
    from mlferry.steps import plan

    text, way = ANNOTATION_CASES[case]
    quick = plan._annotations_read_ahead(text)
    assert (quick is not None) == (way == "quick")
    loaded = plan._annotations_loaded(text)
    assert plan._annotations([text]) == loaded
    if quick is not None:
        assert quick == loaded


def test_rendered_folders_are_read_the_quick_way(tmp_path):
    from mlferry.steps import plan
    from mlferry.steps.render import RenderInput, render_folder
    settings = load_settings(environ={"MLFERRY_GITOPS_REPO": str(tmp_path / "gitops.git")})
    rendered = render_folder(RenderInput(model="Wine Q", version="4", slug=slugify("Wine Q"), env="staging"), settings)
    first = next(iter(sorted(rendered.files.items())))[1]
    assert plan._annotations_read_ahead(first) == plan._annotations_loaded(first)
    assert plan.folder_owner(dict(rendered.files)) == Deployed("Wine Q", "4", "")


def test_deployed_state_reads_what_render_wrote_and_ignores_foreign_folders():
    annotations = 'metadata:\n  annotations:\n    "mlferry.io/model-name": "Wine Q"\n    "mlferry.io/version": "4"\n'
    snapshot = Snapshot(sha="x", files={
        f"teams/ml/{slugify('Wine Q')}/production/deployment.yaml": annotations,
        "teams/ml/not-ours/production/thing.yaml": "kind: ConfigMap\n",
        f"teams/ml/{slugify('Other')}/production/deployment.yaml": annotations,  # name does not match slug
    })
    assert deployed_state(snapshot) == {
        ("Wine Q", "production"): Deployed("Wine Q", "4", f"teams/ml/{slugify('Wine Q')}/production")}
