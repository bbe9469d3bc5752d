"""The rule: which version of a model an environment should serve. One function, every path.

The webhook workflow, the local receiver, reconcile, `status` and `promote` all ask :func:`select`;
an event or a reconcile plan is only a hint to look again. In words (the README says the same):

1. A **hold** recorded in the environment's GitOps folder wins: the folder keeps the version it
   holds until someone releases it (`mlferry release`). A deliberate deploy of another version
   than the rule's (`mlferry promote --version`, `argo submit … -p version=`) records one.
2. Otherwise the environment's **aliases**, in the order the configuration lists them: the first
   alias that exists selects the version (`production: {aliases: [production, champion]}`:
   `production` wins over `champion` when both exist and disagree).
3. Otherwise its **legacy stages**, in the configured order: the newest version in the first
   stage that holds one (as MLflow's own `models:/name/Production`).
4. Otherwise **nothing** selects a version: the folder may be removed, but only on this positive
   evidence, read from a successful registry answer about that very model (steps/plan.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from mlferry.steps.registry import RegisteredModelView
from mlferry.steps.settings import Settings

Selector = tuple[str, str]  # ("alias", "production") or ("stage", "Production")


@dataclass(frozen=True)
class Selection:
    """What the registry selects for one environment of one model."""

    version: str = ""  # "" when no alias or stage of the environment selects one
    by: tuple[Selector, ...] = ()  # every selector of the environment that points at `version`
    ignored: tuple[Selector, ...] = ()  # aliases of the environment that point elsewhere and lose
    ignored_versions: tuple[str, ...] = ()  # the versions those losing aliases point at

    @property
    def selected(self) -> bool:
        return bool(self.version)

    def words(self) -> str:
        """'v4 (@production)', or 'nothing' when no alias or stage selects a version."""
        if not self.version:
            return "nothing"
        return f"v{self.version} ({', '.join(selector_words(s) for s in self.by)})"


def selector_words(selector: Selector) -> str:
    kind, name = selector
    return f"@{name}" if kind == "alias" else f"stage {name}"


def select(view: RegisteredModelView, env: str, settings: Settings) -> Selection:
    """The version the registry selects for ``env`` (rules 2 to 4 above; holds live in git)."""
    config = settings.environment(env)
    present = [alias for alias in config.aliases if alias in view.aliases]
    if present:
        version = view.aliases[present[0]]
        losers = [a for a in present if view.aliases[a] != version]
        return Selection(version=version, by=tuple(("alias", a) for a in present if view.aliases[a] == version),
                         ignored=tuple(("alias", a) for a in losers),
                         ignored_versions=tuple(view.aliases[a] for a in losers))
    stages = {stage.lower(): (stage, version) for stage, version in view.stages.items()}
    for wanted in config.stages:
        if wanted.lower() in stages:
            stage, version = stages[wanted.lower()]
            return Selection(version=version, by=(("stage", stage),))
    return Selection()


def selections(views: list[RegisteredModelView], settings: Settings) -> dict[tuple[str, str], Selection]:
    """(model, env) → what the registry selects, for every configured environment that selects one."""
    found = {}
    for view in views:
        for env in settings.environments:
            chosen = select(view, env, settings)
            if chosen.selected:
                found[(view.name, env)] = chosen
    return found
