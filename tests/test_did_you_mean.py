"""A mistyped model name is answered with the registered names it is closest to."""

from __future__ import annotations

from tests.test_promote import promote


def test_suggestions_ignore_case_and_stop_at_three():
    from mlferry.steps.registry import did_you_mean

    names = ["wine-quality", "Wine-Quality-2", "wine-quantity", "wine-qualities", "iris"]
    assert did_you_mean("wine-qualty", ["wine-quality", "iris"]) == "; did you mean 'wine-quality'?"
    assert did_you_mean("WINE-QUALITY", ["wine-quality"]) == "; did you mean 'wine-quality'?"
    found = did_you_mean("wine-qualty", names)
    assert found.startswith("; did you mean 'wine-quality', ") and found.count("'") == 6 and " or " in found
    assert did_you_mean("churn", names) == ""


def test_promote_of_a_mistyped_model_suggests_the_registered_name(registered_model, gitops_remote, unique_name):
    name, _ = registered_model(f"{unique_name}-wine-quality", alias="production")
    typo = f"{unique_name}-wine-qualty"
    result = promote(typo, "--alias", "production")
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert f"registered model {typo!r} not found" in last, last
    assert f"did you mean {name!r}" in last, last
