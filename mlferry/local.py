"""Local mode: the bundle's own Argo YAML, run on this machine by the local executor.

The WorkflowTemplates are generated from the same Hera code (and bundle config) as the
checked-in YAML, serialized to YAML text and loaded back, so what runs here is what Argo would
receive. A pod's ConfigMap is this process's settings; its Secrets are this process's
environment variables (AWS_*, MLFERRY_GIT_TOKEN, MLFERRY_WEBHOOK_SECRET, …).

At most the bundle's `parallelism` runs (default 4) go on at once on this machine, whichever command
started them (`mlferry promote` in several shells, `events serve`, `reconcile`): the others wait for a
slot before their first step, as workflows wait for the controller's `parallelism` on a cluster.

A failing step is retried as its retryStrategy says, but for at most MLFERRY_CONNECT_DEADLINE seconds
(default 30) after its first attempt: on a laptop a server that refuses connections should fail the
run in half a minute, not after the cluster's minutes of backoff.
"""

import copy
import functools
import os
import re
import shutil
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

from mlferry import engine
from mlferry.engine import ArgumentError, Cluster, NodeEvent, RunResult, list_runs, load_run, new_run_dir
from mlferry.engine.warm import WarmServer, entry_modules, server_environment, warm_enabled
from mlferry.workflows.bundle import Bundle, load_bundle


@dataclass
class LocalArgo:
    bundle: Bundle
    runs_root: Path
    environ: Mapping[str, str]
    # Every run of a LocalArgo forks its Hera runner steps from one warm server (engine.warm),
    # started before the templates are built: a `mlferry reconcile` imports Hera in it while this
    # process builds them, instead of one after the other, and a long-lived process (the receiver)
    # shares it between all its runs. Ended by close(), or when this process ends.
    _warm: WarmServer | None = field(default=None, init=False, repr=False)
    _warm_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    @classmethod
    def from_environment(cls, config: str | None, runs_root: str | Path,
                         environ: Mapping[str, str] | None = None) -> "LocalArgo":
        environ = _absolute_local_paths(dict(os.environ if environ is None else environ))
        # Local mode: the team settings come from this shell (env + mlferry.yaml), as the steps see them.
        # Absolute: each step process runs in its own folder, where a relative path means nothing.
        return cls(load_bundle(config, environ=environ), Path(runs_root).resolve(), environ)

    @functools.cached_property
    def _templates(self) -> dict[str, dict]:
        # Built once per LocalArgo: a long-lived receiver would otherwise rebuild and validate
        # every Argo object for each promotion.
        # Imported here: Hera and the step modules take a second, which the warm server (started
        # first, see submit) spends importing them too, on the other core.
        from mlferry.generate import workflow_templates

        return {doc["metadata"]["name"]: doc for doc in workflow_templates(self.bundle)}

    def templates(self) -> dict[str, dict]:
        """WorkflowTemplates by name, as YAML text would carry them to Argo."""
        return copy.deepcopy(self._templates)  # callers get their own: plans must not share state

    def cluster(self) -> Cluster:
        from mlferry.workflows.tasks import S3_ENDPOINT_KEY, SETTINGS_KEY, TRACKING_URI_KEY

        config_map = {
            SETTINGS_KEY: self.bundle.settings_yaml(),
            TRACKING_URI_KEY: self.environ.get("MLFLOW_TRACKING_URI", ""),
            S3_ENDPOINT_KEY: self.environ.get("MLFLOW_S3_ENDPOINT_URL", ""),
        }
        local = Cluster.from_environment(self.environ)
        return Cluster(config_maps={self.bundle.config_map: config_map}, secrets=local.secrets)

    def load(self, source: str | Path) -> engine.Plan:
        """`workflowtemplate/NAME` (as `argo submit --from`) or a YAML file."""
        templates = self.templates()
        text = str(source)
        if text.lower().startswith(("workflowtemplate/", "wftmpl/")):
            name = text.split("/", 1)[1]
            if name not in templates:
                raise LookupError(f"workflowtemplate {name!r} not found; known: {', '.join(sorted(templates))}")
            return engine.load(templates[name])
        return engine.load(Path(source), workflow_templates=templates.values())

    def submit(self, source: str | Path, parameters: Mapping[str, str],
               on_event: Callable[[NodeEvent], None] | None = None,
               interrupt: threading.Event | None = None) -> RunResult:
        """Run it to its end; `interrupt` stops it from another thread (see engine.run)."""
        warm = self.warm_server(self.environ)  # first: it imports Hera while the templates are built
        plan = self.load(source)
        self._preload(warm)
        run_dir = new_run_dir(self.runs_root, plan.generate_name)
        try:
            # Each run works in its own folder, as a pod works in its image's WORKDIR, never in
            # the caller's folder or the package's.
            budget = connect_deadline(self.environ)
            # The steps see the bound too, for their own retry loops (a git push's, see steps/gitops).
            env = {**self.environ, CONNECT_DEADLINE_ENV: f"{budget:g}"}
            return engine.run(plan, parameters, run_dir=run_dir, env=env, on_event=on_event,
                              cluster=self.cluster(), cwd=run_dir, lock_dir=self.runs_root.parent / "locks",
                              namespace=self.bundle.namespace, interrupt=interrupt,
                              max_runs=self.bundle.parallelism, retry_budget=budget,
                              warm=warm)
        except ArgumentError:
            shutil.rmtree(run_dir, ignore_errors=True)  # it never ran: no record of a run
            raise

    def warm_server(self, env: Mapping[str, str]) -> WarmServer | None:
        """The shared warm server, started on first use; None when warm starts are off."""
        if not warm_enabled(env):
            return None
        with self._warm_lock:
            if self._warm is None:
                self.runs_root.mkdir(parents=True, exist_ok=True)
                self._warm = WarmServer(sys.executable, str(self.runs_root), server_environment(env), any_cwd=True)
            return self._warm

    def _preload(self, warm: WarmServer | None) -> None:
        """The step modules every template runs, for the server to import between requests."""
        if warm is not None:
            warm.preload(entry_modules(t for d in self._templates.values() for t in d["spec"]["templates"]))

    def close(self) -> None:
        with self._warm_lock:
            if self._warm is not None:
                self._warm.close()
                self._warm = None

    def runs(self) -> list[RunResult]:
        return list_runs(self.runs_root)

    def run(self, run_id: str) -> RunResult:
        return load_run(self.runs_root, run_id)


CONNECT_DEADLINE_ENV = "MLFERRY_CONNECT_DEADLINE"
DEFAULT_CONNECT_DEADLINE = 30.0


def connect_deadline(environ: Mapping[str, str]) -> float:
    """Seconds a local run keeps retrying a failing step (MLFERRY_CONNECT_DEADLINE, default 30)."""
    text = environ.get(CONNECT_DEADLINE_ENV, "").strip()
    if not text:
        return DEFAULT_CONNECT_DEADLINE
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if seconds < 0:
        raise ValueError(f"{CONNECT_DEADLINE_ENV}={text!r} is not a number of seconds (e.g. 30)")
    return seconds


def _absolute_local_paths(environ: dict[str, str]) -> dict[str, str]:
    """A relative MLFERRY_CONFIG or local GitOps remote, made absolute against the caller's folder
    (the steps run elsewhere). URLs and scp-like `host:path` remotes are left as they are."""
    for name in ("MLFERRY_CONFIG", "MLFERRY_GITOPS_REPO"):
        value = environ.get(name, "")
        if value and "://" not in value and not re.match(r"[^/]*:", value):
            environ[name] = str(Path(value).expanduser().resolve())
    return environ
