"""Model names → slugs, folders and bucket paths that are safe and never shared."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlferry.steps.layout import gitops_folder, model_prefix, parse_gitops_folder
from mlferry.steps.naming import MAX_NAME_LENGTH, is_slug, kubernetes_name, slugify

NAMES = st.one_of(
    st.text(min_size=1, max_size=300).filter(str.strip),
    st.from_regex(r"[A-Za-z0-9 ._/-]{1,300}", fullmatch=True).filter(str.strip),
    st.sampled_from(["..", "../..", "a/../b", "Wine Quality", "wine.quality", "WINE", "wine", "é" * 300,
                     "3d-model", "-x-", "x" * 300, "model\nname", "ü-model"]),
)


@settings(max_examples=400, deadline=None)
@given(NAMES)
def test_every_name_maps_to_a_safe_slug(name):
    slug = slugify(name)
    assert is_slug(slug)
    assert len(kubernetes_name(slug, "production")) <= MAX_NAME_LENGTH
    folder = gitops_folder("ml", slug, "production")
    assert parse_gitops_folder(folder) == ("ml", slug, "production")
    assert model_prefix(slug, "1") == f"models/{slug}/1/"
    assert ".." not in folder and "/" not in slug


@settings(max_examples=400, deadline=None)
@given(NAMES, NAMES)
def test_two_names_never_share_a_slug(a, b):
    if a != b:
        assert slugify(a) != slugify(b)


@pytest.mark.parametrize("name,slug", [
    ("wine-quality", "wine-quality"),  # already a good slug: kept as the user wrote it
    ("Wine Quality", "wine-quality-"),  # changed: readable stem plus a hash of the original
    ("wine.quality", "wine-quality-"),
    ("3d-model", "m-3d-model-"),  # Services need a letter first
])
def test_slugs_stay_readable(name, slug):
    assert slugify(name).startswith(slug)


def test_names_that_differ_only_by_case_get_different_slugs():
    assert len({slugify("Wine"), slugify("wine"), slugify("WINE")}) == 3


def test_an_empty_name_is_refused():
    with pytest.raises(ValueError, match="model name is empty"):
        slugify("  ")


@pytest.mark.parametrize("folder", ["teams/ml/../x/prod", "/teams/ml/x/prod", "teams/ml/x", "other/ml/x/prod",
                                    "teams/ml/x/prod/extra", "teams/ML/x/prod"])
def test_only_owned_folders_are_accepted(folder):
    with pytest.raises(ValueError, match="not a folder mlferry owns"):
        parse_gitops_folder(folder)
