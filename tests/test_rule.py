"""The rule (steps/rule.py) and the decisions built on it, as values: no server needed."""

from __future__ import annotations

import pytest

from mlferry.steps import rule
from mlferry.steps.plan import Deployed, PruneRefused, confirm_removals, guard_prune, plan_changes
from mlferry.steps.registry import RegisteredModelView
from mlferry.steps.resolve import PromotionRefused, ResolveInput, decide
from mlferry.steps.settings import Settings

SETTINGS = Settings(environments={
    "staging": {"aliases": ["staging"], "stages": ["Staging"]},
    "production": {"aliases": ["production", "champion"], "stages": ["Production", "Archived-Prod"]},
})


def view(aliases=None, stages=None, name="m") -> RegisteredModelView:
    return RegisteredModelView(name, aliases or {}, stages or {})


@pytest.mark.parametrize("aliases,stages,expected,by", [
    ({"production": "4", "champion": "2"}, {}, "4", (("alias", "production"),)),  # configured order, not names
    ({"champion": "2"}, {"Production": "9"}, "2", (("alias", "champion"),)),  # any alias beats a stage
    ({"production": "3", "champion": "3"}, {}, "3", (("alias", "production"), ("alias", "champion"))),
    ({}, {"archived-prod": "5", "Production": "6"}, "6", (("stage", "Production"),)),  # stage order, any case
    ({"canary": "7"}, {"Staging": "1"}, "", ()),  # nothing of production's
])
def test_select_follows_the_configured_order(aliases, stages, expected, by):
    chosen = rule.select(view(aliases, stages), "production", SETTINGS)
    assert (chosen.version, chosen.by) == (expected, by)


def test_a_losing_alias_is_named_with_its_version():
    chosen = rule.select(view({"production": "4", "champion": "2"}), "production", SETTINGS)
    assert chosen.ignored == (("alias", "champion"),) and chosen.ignored_versions == ("2",)
    assert chosen.words() == "v4 (@production)"


def ask(**fields) -> ResolveInput:
    return ResolveInput(**{"model": "m", "env": "production", **fields})


def test_an_event_is_a_hint_and_a_deleted_alias_falls_back_to_the_next():
    both = view({"production": "4", "champion": "2"})
    assert decide(ask(alias="champion", event="created"), both, SETTINGS).version == "4"
    assert decide(ask(alias="production", event="deleted"), view({"champion": "2"}), SETTINGS).version == "2"
    gone = decide(ask(alias="production", event="deleted"), view({"staging": "1"}), SETTINGS)
    assert gone.action == "retire"


def test_an_explicit_version_is_plain_when_the_rule_agrees_and_a_hold_otherwise():
    registry = view({"production": "4"})
    assert decide(ask(version="4"), registry, SETTINGS).hold == ""
    held = decide(ask(version="2", trigger="manual"), registry, SETTINGS)
    assert (held.version, held.hold) == ("2", "manual deploy of v2; the rule selects v4 (@production)")
    reason = decide(ask(version="2", hold="bad\nlatency\x1b[31m"), registry, SETTINGS).hold
    assert reason == "bad latency [31m"  # one printable line: it becomes an annotation, a tag, a trailer


def test_another_environments_alias_needs_force_and_then_holds():
    registry = view({"staging": "5", "production": "4"})
    with pytest.raises(PromotionRefused, match="alias 'staging' \\(v5\\) belongs to environment 'staging'"):
        decide(ask(alias="staging"), registry, SETTINGS)
    forced = decide(ask(alias="staging", force=True), registry, SETTINGS)
    assert (forced.version, forced.hold) == ("5", "forced: @staging (v5) deployed to production")


def test_a_hold_of_nothing_is_refused():
    with pytest.raises(PromotionRefused, match="name the version to hold"):
        decide(ask(hold="freeze"), view(), SETTINGS)


def dep(model, version, env, hold=""):
    return Deployed(model, version, f"teams/ml/{model}/{env}", hold)


def test_the_plan_leaves_holds_and_unknown_environments_alone():
    selected = {("a", "production"): rule.Selection("5"), ("b", "staging"): rule.Selection("2")}
    deployed = {("a", "production"): dep("a", "4", "production", hold="frozen"),
                ("c", "staging"): dep("c", "1", "staging", hold="kept on purpose"),
                ("d", "qa"): dep("d", "3", "qa")}
    plan = plan_changes(selected, deployed, SETTINGS, prune=True)
    assert plan.promotions == [{"model": "b", "version": "2", "env": "staging", "was": ""}]
    assert plan.removals == []
    assert [(h["model"], h["wanted"]) for h in plan.held] == [("a", "5"), ("c", "")]
    assert plan.kept[0]["model"] == "d" and "'qa' is not in this configuration" in plan.kept[0]["why"]


def test_two_names_for_one_folder_promote_only_the_owner():
    selected = {("Wine", "staging"): rule.Selection("1"), ("wine", "staging"): rule.Selection("1")}
    from mlferry.steps.naming import slugify

    assert slugify("Wine") != slugify("wine")  # different names, different folders: no conflict
    owner = {("Wine", "staging"): Deployed("Wine", "1", f"teams/ml/{slugify('Wine')}/staging")}
    twin = slugify("Wine")
    plan = plan_changes({**selected, (twin, "staging"): rule.Selection("3")}, owner, SETTINGS, prune=True)
    assert plan.conflicts == [{"model": twin, "env": "staging",
                               "why": f"its folder teams/ml/{twin}/staging belongs to model 'Wine'; rename one of them"}]
    assert {p["model"] for p in plan.promotions} == {"wine"}


def test_a_name_argo_would_read_as_a_template_is_refused_by_the_plan():
    plan = plan_changes({("m {{7*7}}", "staging"): rule.Selection("1")}, {}, SETTINGS, prune=True)
    assert plan.promotions == [] and "holds '{{', which Argo reads as a template variable" in plan.conflicts[0]["why"]


def test_a_removal_needs_the_models_own_answer():
    deployed = {("a", "staging"): dep("a", "1", "staging"), ("b", "staging"): dep("b", "1", "staging"),
                ("c", "staging"): dep("c", "1", "staging")}
    draft = plan_changes({}, deployed, SETTINGS, prune=True)
    answers = {"a": view({"staging": "2"}, name="a"),  # the listing missed it: promote, do not remove
               "b": view(name="b"),  # answered: no alias selects staging
               "c": None}  # answered: no such model
    plan = confirm_removals(draft, answers.__getitem__, SETTINGS)
    assert plan.promotions == [{"model": "a", "version": "2", "env": "staging", "was": "1"}]
    assert [(r["model"], r["why"]) for r in plan.removals] == [
        ("b", "no alias or stage selects a version"), ("c", "the registry has no such model any more")]


def test_a_failed_answer_removes_nothing():
    deployed = {("a", "staging"): dep("a", "1", "staging")}

    def failing(_name):
        raise ConnectionError("registry down")

    with pytest.raises(ConnectionError):
        confirm_removals(plan_changes({}, deployed, SETTINGS, prune=True), failing, SETTINGS)


@pytest.mark.parametrize("removals,folders,allowed", [(1, 2, True), (2, 2, False), (1, 1, False), (3, 5, False),
                                                       (2, 5, True), (0, 0, True)])
def test_the_prune_guard(removals, folders, allowed):
    plan = plan_changes({}, {(f"m{i}", "staging"): dep(f"m{i}", "1", "staging") for i in range(removals)},
                        SETTINGS, prune=True)
    if allowed:
        assert guard_prune(plan, folders, 0.5) is plan
    else:
        with pytest.raises(PruneRefused, match=f"refusing to remove {removals} of the {folders}"):
            guard_prune(plan, folders, 0.5)
        assert guard_prune(plan, folders, 0.5, force=True) is plan


def test_a_removal_commit_names_each_model_on_one_printable_line():
    from mlferry.steps.retire import retirement

    odd = "Wine\nForged-Trailer: yes \u202eevil"
    change = retirement([("staging", Deployed(odd, "3", "unused"))], "ml", "webhook", "mlferry-promote-x")
    subject, _, rest = change.message.partition("\n")
    assert subject.isprintable() and "\n" not in subject and "\u202e" not in change.message
    assert "\nForged-Trailer" not in change.message  # the name cannot start a trailer of its own
