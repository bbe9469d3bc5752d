"""THE BASELINE for bench/reconcile_scale.py: the seed's watcher algorithm, re-implemented.

This is not mlferry's code path and nothing in mlferry uses it. It re-implements, on the same
registry, object store and GitOps remote, what the project's seed did on every pass of its
watcher loop, so that mlferry's reconcile can be compared with it in the same run:

    for every registered model (listed with MLflow's default page size, 100):
        ask the registry for the versions its legacy stages select   (1 request per model)
        for every alias (and stage) that maps to an environment:
            look the version up                                      (1 request per alias)
            re-render the environment's folder                      (steps.render.render_folder)
            HEAD the version's objects in S3                          (1 HEAD per model version;
                                                                       copy them when absent)
            commit the re-rendered folder, even when nothing changed  (git commit --allow-empty)
    push once at the end of the pass

Rendering and validation are mlferry's own (render_folder), so the baseline pays no extra
cost for a different template engine. It pushes once per pass, the cheapest reading of "make a
commit per model and alias" (a push per commit would cost more). Its working clone is made
once, when the watcher starts, as a long-running watcher would keep one; each pass starts by
fetching and resetting to the remote head.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from mlflow import MlflowClient

from mlferry.steps.layout import model_prefix
from mlferry.steps.naming import slugify
from mlferry.steps.render import RenderInput, render_folder
from mlferry.steps.settings import Settings

HEADED_FILE = "MLmodel"  # the one object HEADed per model version
IDENTITY = {"GIT_AUTHOR_NAME": "seed-watcher", "GIT_AUTHOR_EMAIL": "seed@watcher.invalid",
            "GIT_COMMITTER_NAME": "seed-watcher", "GIT_COMMITTER_EMAIL": "seed@watcher.invalid"}


@dataclass
class Pass:
    """What one pass of the watcher did."""

    models: int = 0
    entries: int = 0  # (model, environment) pairs rendered and committed
    heads: int = 0
    copies: int = 0  # versions whose objects were absent and copied
    commits: int = 0
    changed: list[str] = field(default_factory=list)  # folders whose tree really changed


class SeedWatcher:
    def __init__(self, settings: Settings, mlflow: MlflowClient, s3, workdir: Path):
        self.settings = settings
        self.mlflow = mlflow
        self.s3 = s3
        self.clone = Path(workdir) / "seed-clone"
        self.branch = settings.gitops_branch
        self.env = {**os.environ, **IDENTITY, "GIT_TERMINAL_PROMPT": "0"}
        if not self.clone.exists():
            self._git("clone", "-q", "--branch", self.branch, settings.gitops_repo, str(self.clone), cwd=workdir)

    def run_once(self) -> Pass:
        done = Pass()
        self._git("fetch", "-q", "origin", self.branch)
        self._git("reset", "-q", "--hard", f"origin/{self.branch}")
        stages = sorted({s for env in self.settings.environments.values() for s in env.stages})
        token = None
        while True:
            page = self.mlflow.search_registered_models(page_token=token)  # default page size: 100
            for model in page:
                done.models += 1
                for env, version in self._selected(model, stages).items():
                    self._ferry(model.name, env, version, done)
            token = page.token
            if not token:
                break
        changed = self._git("diff", "--name-only", f"origin/{self.branch}", "HEAD").splitlines()
        done.changed = sorted({path.rsplit("/", 1)[0] for path in changed})
        self._git("push", "-q", "origin", f"HEAD:{self.branch}")
        return done

    def _selected(self, model, stages: list[str]) -> dict:
        """environment → ModelVersion, as the seed chose it: aliases win over stages."""
        chosen = {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # get_latest_versions is deprecated in MLflow 3
            latest = self.mlflow.get_latest_versions(model.name, stages=stages) if stages else []
        for version in latest:
            env = self.settings.environment_for_stage(version.current_stage)
            if env:
                chosen[env] = version
        for alias in sorted(model.aliases or {}):
            env = self.settings.environment_for_alias(alias)
            if env:
                chosen[env] = self.mlflow.get_model_version_by_alias(model.name, alias)
        return chosen

    def _ferry(self, name: str, env: str, version, done: Pass) -> None:
        done.entries += 1
        slug = slugify(name)
        rendered = render_folder(RenderInput(model=name, version=str(version.version), slug=slug, env=env,
                                             run_id=version.run_id or "", description=version.description or ""),
                                 self.settings)
        prefix = model_prefix(slug, str(version.version))
        done.heads += 1
        if not self._exists(prefix + HEADED_FILE):
            self._copy(version.source, prefix)
            done.copies += 1
        folder = self.clone / rendered.folder
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        for file_name, text in rendered.files.items():
            (folder / file_name).write_text(text)
        self._git("add", "-A", "--", rendered.folder)
        self._git("commit", "-q", "--allow-empty", "-m", f"deploy {name} v{version.version} to {env}")
        done.commits += 1

    def _exists(self, key: str) -> bool:
        try:
            self.s3.head_object(Bucket=self.settings.bucket, Key=key)
            return True
        except self.s3.exceptions.ClientError as err:
            if err.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise

    def _copy(self, source: str, prefix: str) -> None:
        """Server-side copy of every object under the source: an s3:// one, or a mlflow-artifacts:/ one of
        the local stack, whose tracking server keeps its artifacts in bucket `mlflow-artifacts`."""
        parts = urlsplit(source)
        if parts.scheme == "mlflow-artifacts" and not parts.netloc:
            parts = urlsplit(f"s3://mlflow-artifacts/{parts.path.lstrip('/')}")
        if parts.scheme != "s3":
            raise ValueError(f"the seed watcher re-implementation copies from the bench's sources only, not {source!r}")
        bucket, root = parts.netloc, parts.path.lstrip("/").rstrip("/") + "/"
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=root):
            for obj in page.get("Contents", []):
                self.s3.copy_object(Bucket=self.settings.bucket, Key=prefix + obj["Key"][len(root):],
                                    CopySource={"Bucket": bucket, "Key": obj["Key"]})

    def _git(self, *args: str, cwd: Path | None = None) -> str:
        return subprocess.run(["git", *args], cwd=cwd or self.clone, env=self.env, check=True,
                              capture_output=True, text=True).stdout
