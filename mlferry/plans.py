"""What reconcile and promote would do, or did: the plan in words, for people.

`mlferry reconcile --dry-run` and `mlferry promote --dry-run` compute the plan with the very
functions the workflow's steps run (steps/plan.py, steps/resolve.py), print it, and change
nothing. Their exit code says whether changes are pending, as `terraform plan -detailed-exitcode`:
0 nothing to do, 2 changes pending, 1 an error.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Mapping

from mlferry.table import printable

NOTHING_PENDING, PENDING = 0, 2


def plan_lines(plan: Mapping[str, list[dict[str, str]]]) -> list[str]:
    """One line per change or decision of a reconcile plan (its lists, as the plan step outputs them)."""
    def name(entry: dict[str, str]) -> str:
        return printable(entry["model"], 64)

    lines = [f"  promote  {name(p)} v{p['version']} to {p['env']}"
             + (f" (git holds v{p['was']})" if p.get("was") else " (not deployed yet)")
             for p in plan.get("promotions", [])]
    lines += [f"  prune    {name(r)} v{r['version']} from {r['env']}: {r['why']}" for r in plan.get("removals", [])]
    lines += [f"  held     {name(h)} v{h['version']} in {h['env']}: {printable(h['reason'], 120)}"
              + (f" (the rule selects v{h['wanted']})" if h.get("wanted") and h["wanted"] != h["version"] else "")
              for h in plan.get("held", [])]
    lines += [f"  kept     {name(k)} v{k['version']} in {k['env']}: {k['why']}" for k in plan.get("kept", [])]
    lines += [f"  refused  {name(c)} in {c['env']}: {printable(c['why'], 200)}" for c in plan.get("conflicts", [])]
    return lines


def plan_lists(outputs: Mapping[str, str]) -> dict[str, list[dict[str, str]]]:
    """The plan step's list outputs (JSON text in a run's record) as lists."""
    found = {}
    for key in ("promotions", "removals", "held", "kept", "conflicts"):
        try:
            value = json.loads(outputs.get(key) or "[]")
        except ValueError:
            value = []
        found[key] = value if isinstance(value, list) else []
    return found


def preview_reconcile(settings, prune: str = "auto") -> tuple[str, int]:
    """(the plan in words, exit code) of a reconcile that is not run."""
    from mlferry.steps.plan import current_plan

    plan = current_plan(settings, prune)
    lines = plan_lines(plan.model_dump())
    pending = plan.promotion_count + plan.removal_count
    head = (f"reconcile plan (dry run, nothing changed): {plan.promotion_count} to promote, "
            f"{plan.removal_count} to prune, {len(plan.held)} held, {len(plan.kept)} kept, "
            f"{len(plan.conflicts)} refused, {plan.unchanged} unchanged")
    return "\n".join([head, *lines]) + "\n", PENDING if pending else NOTHING_PENDING


@dataclass(frozen=True)
class PromotionPreview:
    action: str  # promote | retire | unchanged | blocked
    line: str

    @property
    def exit_code(self) -> int:
        return PENDING if self.action in ("promote", "retire") else NOTHING_PENDING


def preview_promotion(settings, request) -> PromotionPreview:
    """What `mlferry promote` would do for ``request`` (a PromotionRequest), read-only."""
    from mlferry.steps import registry
    from mlferry.steps.commit import check_owner, current_owner
    from mlferry.steps.layout import gitops_folder
    from mlferry.steps.naming import slugify
    from mlferry.steps.resolve import ResolveInput, decide

    mlflow = registry.client()
    settings.environment(request.env)
    asked = ResolveInput(model=request.model, env=request.env, version=request.version, alias=request.alias,
                         stage=request.stage, hold=request.hold, release=request.release, force=request.force,
                         trigger=request.trigger)
    decision = decide(asked, registry.model_view(mlflow, request.model), settings)
    folder = gitops_folder(settings.team, slugify(request.model), request.env)
    _, there = current_owner(settings.require_gitops_repo(), settings.gitops_branch, folder)
    model = printable(request.model, 64)
    blocked = check_owner(request.model, folder, there, hold=decision.hold, release=request.release)  # as commit
    was = f"git holds v{there.version}" + (f", held: {there.hold}" if there.hold else "") if there else "not deployed"
    if blocked:
        return PromotionPreview("blocked", f"held: {model} stays at v{there.version} in {request.env} ({there.hold}); "
                                           f"the rule selects v{decision.version or ' nothing'}; `mlferry release` "
                                           "ends the hold")
    if decision.action == "retire":
        if not there:
            return PromotionPreview("unchanged", f"unchanged: nothing selects a version of {model} for "
                                                 f"{request.env}, and git has no folder")
        return PromotionPreview("retire", f"would remove {model} v{there.version} from {request.env}: {decision.why}")
    same = there and there.version == decision.version and there.hold == decision.hold
    if same:
        return PromotionPreview("unchanged", f"unchanged: {model} v{decision.version} in {request.env} ({decision.why})")
    held = f", held: {decision.hold}" if decision.hold else ""
    return PromotionPreview("promote", f"would promote {model} v{decision.version} to {request.env} ({was}); "
                                       f"{decision.why}{held}")
