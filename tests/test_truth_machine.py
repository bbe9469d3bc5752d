"""A stateful property test of "one truth": random alias moves and deletions, webhook deliveries
(duplicated, stale, dropped), reconciles, holds, releases and rollbacks, against the real MLflow
server and a real bare GitOps remote. After every step no folder has gone while an alias of its
environment exists; after a final reconcile the repo holds exactly what the documented rule says.

The steps run in this process (resolve → render → commit, retire, plan, rollback: the very step
functions the workflows run), without publish, which copies bytes and decides nothing here, and
without the local engine, whose fidelity has its own tests: that keeps an example under seconds.
MLFERRY_TRUTH_EXAMPLES sets how many examples to run (CI: 4; a longer hunt: 200).
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from hypothesis import HealthCheck, settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule, \
    run_state_machine_as_test
from mlflow import MlflowClient

from mlferry.stack import init_bare_repo
from mlferry.steps import gitops
from mlferry.steps.commit import CommitInput, commit
from mlferry.steps.layout import team_prefix
from mlferry.steps.plan import PruneRefused, deployed_state, plan
from mlferry.steps.plan import PlanInput
from mlferry.steps.render import RenderInput, render
from mlferry.steps.resolve import ResolveInput, resolve
from mlferry.steps.retire import RetireInput, retire
from mlferry.steps.rollback import RollbackInput, RollbackRefused, rollback

EXAMPLES = int(os.environ.get("MLFERRY_TRUTH_EXAMPLES", "4"))
ENVIRONMENTS = {"staging": ["s"], "production": ["p1", "p2"]}  # alias names get a per-test suffix


def machine(model: str, versions: list[str], workdir: Path, suffix: str):
    aliases = {env: [f"{a}-{suffix}" for a in names] for env, names in ENVIRONMENTS.items()}
    env_of = {alias: env for env, names in aliases.items() for alias in names}
    client = MlflowClient()

    class Truth(RuleBasedStateMachine):
        """The model of the world: the aliases (the registry's truth) and the holds mlferry recorded."""

        @initialize()
        def fresh(self):
            for alias in env_of:
                try:
                    client.delete_registered_model_alias(model, alias)
                except Exception:  # noqa: BLE001 - not set: fine
                    pass
            self.remote = workdir / f"gitops-{uuid.uuid4().hex[:8]}.git"
            init_bare_repo(self.remote, "main")
            os.environ["MLFERRY_GITOPS_REPO"] = str(self.remote)
            self.aliases: dict[str, str] = {}
            self.holds: dict[str, str] = {}  # env → held version

        # -- what people and MLflow do -------------------------------------------------------

        @rule(alias=st.sampled_from(sorted(env_of)), version=st.sampled_from(versions))
        def move_alias(self, alias, version):
            client.set_registered_model_alias(model, alias, version)
            self.aliases[alias] = version

        @rule(alias=st.sampled_from(sorted(env_of)))
        def delete_alias(self, alias):
            if alias in self.aliases:
                client.delete_registered_model_alias(model, alias)
                del self.aliases[alias]

        @rule(alias=st.sampled_from(sorted(env_of)), action=st.sampled_from(["created", "deleted"]))
        def deliver_webhook(self, alias, action):
            """A delivery, possibly a duplicate or stale: the event is only a hint to look again."""
            self.converge(env_of[alias], alias=alias, event=action)

        @rule()
        def reconcile(self):
            try:
                found = plan(PlanInput(prune="auto"))
            except PruneRefused:
                return  # the guard: nothing happens, checked by the invariant
            for item in found.promotions:
                self.converge(item["env"])
            if found.removals:
                retire(RetireInput(targets=found.removals, trigger="reconcile"))

        @rule(env=st.sampled_from(sorted(aliases)), version=st.sampled_from(versions))
        def hold(self, env, version):
            self.converge(env, version=version, hold="frozen by the machine")
            self.holds[env] = version

        @rule(env=st.sampled_from(sorted(aliases)))
        def release(self, env):
            self.converge(env, release=True)
            self.holds.pop(env, None)

        @rule(env=st.sampled_from(sorted(aliases)))
        def roll_back(self, env):
            try:
                done = rollback(RollbackInput(model=model, env=env, reason="machine"))
            except RollbackRefused:
                return
            self.aliases[done.alias] = done.to
            self.converge(env)

        # -- one promotion, as the workflow runs it (publish aside) ----------------------------

        def converge(self, env, **asked):
            self.before = self.folders()
            found = resolve(ResolveInput(model=model, env=env, **asked))
            if found.action == "retire":
                retire(RetireInput(model=model, env=env, release=found.release))
                return
            rendered = render(RenderInput(model=found.name, version=found.version, slug=found.slug, env=env,
                                          run_id=found.run_id, hold=found.hold, serving=found.serving))
            commit(CommitInput(model=found.name, version=found.version, env=env, folder=rendered.folder,
                               files=rendered.files, hold=found.hold, release=found.release))

        # -- what must always hold -----------------------------------------------------------

        def folders(self) -> dict[str, str]:
            snapshot = gitops.read_snapshot(str(self.remote), "main", team_prefix("ml"))
            return {env: d.version for (_, env), d in deployed_state(snapshot).items()}

        def expected(self) -> dict[str, str]:
            """The documented rule: a hold wins, then the first configured alias that exists."""
            found = {}
            for env, names in aliases.items():
                present = [self.aliases[a] for a in names if a in self.aliases]
                if env in self.holds:
                    found[env] = self.holds[env]
                elif present:
                    found[env] = present[0]
            return found

        @invariant()
        def no_folder_goes_while_its_alias_exists(self):
            before = getattr(self, "before", None)
            if before is None:
                return
            now = self.folders()
            for env, names in aliases.items():
                if env in before and any(a in self.aliases for a in names):
                    assert env in now, f"{env}'s folder was removed while an alias of it exists"
            self.before = None

        def teardown(self):
            if not hasattr(self, "remote"):
                return
            # The final reconcile: past the guard, since one model's two folders are "all" of them.
            found = plan(PlanInput(prune="force"))
            for item in found.promotions:
                self.converge(item["env"])
            if found.removals:
                retire(RetireInput(targets=found.removals, prune="force", trigger="reconcile"))
            assert self.folders() == self.expected()

    return Truth


def test_git_always_converges_to_the_rule(registered_model, tmp_path, monkeypatch, unique_name):
    name, v1 = registered_model()
    versions = [v1, registered_model(name)[1], registered_model(name)[1]]
    suffix = uuid.uuid4().hex[:6]
    config = tmp_path / "mlferry.yaml"
    config.write_text("environments:\n" + "".join(
        f"  {env}: {{aliases: [{', '.join(f'{a}-{suffix}' for a in names)}]}}\n" for env, names in ENVIRONMENTS.items()))
    monkeypatch.setenv("MLFERRY_CONFIG", str(config))
    monkeypatch.setenv("MLFERRY_GITOPS_REPO", "")  # each example sets its own
    monkeypatch.setenv("MLFERRY_GITOPS_BRANCH", "main")
    run_state_machine_as_test(lambda: machine(name, versions, tmp_path, suffix)(), settings=settings(
        max_examples=EXAMPLES, stateful_step_count=10, deadline=None, derandomize=EXAMPLES <= 10,
        suppress_health_check=list(HealthCheck)))
