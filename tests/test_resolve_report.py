"""resolve and report against a real MLflow server."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from mlflow import MlflowClient

from mlferry.steps import registry
from mlferry.steps.report import ReportInput, outcome_tags, report
from mlferry.steps.resolve import ResolveInput, resolve
from mlferry.steps.settings import SettingsError


def test_resolve_by_alias_returns_what_later_steps_need(registered_model):
    name, version = registered_model(alias="production", git_commit="c0ffee" * 6 + "abcd",
                                     description="first try")
    got = resolve(ResolveInput(model=name, alias="production", env="production"))
    assert got.name == name and got.version == version
    assert got.slug == got.slug.lower() and len(got.slug) <= 40
    assert got.source_uri.startswith("mlflow-artifacts:/")
    assert got.run_id and got.source_commit == "c0ffee" * 6 + "abcd"
    assert "sklearn" in got.flavors and "python_function" in got.flavors
    assert got.signature["inputs"][0]["type"] == "tensor"
    assert got.metrics == {"rmse": 0.125}
    assert got.description == "first try"


def test_resolve_by_version_and_by_stage(registered_model):
    name, _ = registered_model()
    _, v2 = registered_model(name)
    assert resolve(ResolveInput(model=name, version=v2, env="staging")).version == v2
    MlflowClient().transition_model_version_stage(name, "1", "Staging")
    assert resolve(ResolveInput(model=name, stage="staging", env="staging")).version == "1"


@pytest.mark.parametrize("selector,expected", [
    ({"version": "99"}, "has no version '99'"),
    ({"alias": "nope"}, "has no alias 'nope' (its aliases: production)"),
    ({"stage": "Production"}, "has no version in stage 'Production'"),
])
def test_resolve_names_what_is_missing(registered_model, selector, expected):
    name, _ = registered_model(alias="production")
    with pytest.raises(registry.RegistryError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        resolve(ResolveInput(model=name, env="production", **selector))


def test_resolve_unknown_model_and_environment(stack, unique_name):
    with pytest.raises(registry.RegistryError, match=f"registered model '{unique_name}' not found"):
        resolve(ResolveInput(model=unique_name, version="1", env="production"))
    with pytest.raises(SettingsError, match="unknown environment 'qa'"):
        resolve(ResolveInput(model=unique_name, version="1", env="qa"))


def test_resolve_needs_exactly_one_selector(stack, unique_name):
    with pytest.raises(ValueError, match="at most one of version, alias or stage"):
        resolve(ResolveInput(model=unique_name, version="1", alias="production", env="production"))


def test_a_version_that_is_not_ready_is_refused():
    # An OSS MLflow server finalizes versions at once, so the version is built directly here.
    pending = registry.Version("wine", "3", status="PENDING_REGISTRATION")
    with pytest.raises(registry.RegistryError, match="'wine' version 3 is PENDING_REGISTRATION, not READY"):
        registry.check_ready(pending)


def test_report_writes_outcome_tags_and_clears_old_errors(registered_model):
    name, version = registered_model()
    report(ReportInput(model=name, version=version, env="staging", status="failed", message="boom"))
    tags = MlflowClient().get_model_version(name, version).tags
    assert tags["mlferry.staging.status"] == "failed" and tags["mlferry.staging.error"] == "boom"
    report(ReportInput(model=name, version=version, env="staging", commit="abc123",
                       uri="s3://mlferry/models/x/1/"))
    tags = MlflowClient().get_model_version(name, version).tags
    assert tags["mlferry.staging.status"] == "deployed"
    assert tags["mlferry.staging.commit"] == "abc123"
    assert tags["mlferry.staging.uri"] == "s3://mlferry/models/x/1/"
    assert tags["mlferry.staging.error"] == ""


def test_outcome_tags_are_pure():
    now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    tags = outcome_tags(ReportInput(model="m", version="1", env="production", status="failed",
                                    message="x" * 9000), now)
    assert tags["mlferry.production.at"] == "2026-01-02T03:04:05+00:00"
    assert len(tags["mlferry.production.error"]) == 5000
