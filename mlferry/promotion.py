"""One promotion: resolve → publish → render → commit → report.

The order and the data passed between the steps are the same as in the `mlferry-promote`
WorkflowTemplate; a failure after resolve is written back to the registry as
`mlferry.<env>.status=failed` before it is raised.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from steps.commit import Commit, CommitInput, commit
from steps.publish import Publication, PublishInput, publish
from steps.render import RenderInput, Rendered, render
from steps.report import ReportInput, report
from steps.resolve import ModelVersion, ResolveInput, resolve


@dataclass(frozen=True)
class PromotionRequest:
    model: str
    env: str
    version: str = ""
    alias: str = ""
    stage: str = ""
    trigger: str = "manual"


@dataclass(frozen=True)
class PromotionResult:
    version: ModelVersion
    publication: Publication
    rendered: Rendered
    commit: Commit

    def summary(self) -> str:
        pub, com = self.publication, self.commit
        change = f"commit {com.sha[:12]}" if com.changed else f"nothing to change (head {com.sha[:12]})"
        return "\n".join([
            f"promoted {self.version.name} v{self.version.version} to {self.version.env}",
            f"  artifacts  {pub.uri}  ({pub.uploaded} uploaded, {pub.skipped} already there, "
            f"{pub.files} files, {pub.bytes_uploaded} bytes sent)",
            f"  gitops     {com.repo} {com.branch}:{com.folder}/  {change}",
        ])


def promote(req: PromotionRequest, progress: Callable[[str], None] = lambda _line: None) -> PromotionResult:
    mv = resolve(ResolveInput(model=req.model, version=req.version, alias=req.alias, stage=req.stage, env=req.env))
    progress(f"resolve   {mv.name} v{mv.version} (run {mv.run_id or '-'}) for {mv.env}")
    try:
        pub = publish(PublishInput(model=mv.name, version=mv.version, slug=mv.slug, source_uri=mv.source_uri))
        progress(f"publish   {pub.uri} ({pub.uploaded} uploaded, {pub.skipped} skipped)")
        rendered = render(RenderInput(model=mv.name, version=mv.version, slug=mv.slug, env=mv.env,
                                      run_id=mv.run_id, source_commit=mv.source_commit,
                                      description=mv.description))
        progress(f"render    {rendered.folder}/ ({', '.join(sorted(rendered.files))})")
        com = commit(CommitInput(model=mv.name, version=mv.version, env=mv.env, folder=rendered.folder,
                                 files=rendered.files, run_id=mv.run_id, trigger=req.trigger))
        progress(f"commit    {com.sha[:12]}" + ("" if com.changed else " (unchanged)"))
    except Exception as err:
        report(ReportInput(model=mv.name, version=mv.version, env=mv.env, status="failed",
                           message=f"{type(err).__name__}: {err}"))
        raise
    report(ReportInput(model=mv.name, version=mv.version, env=mv.env, commit=com.sha, uri=pub.uri))
    progress(f"report    tags mlferry.{mv.env}.* set on {mv.name} v{mv.version}")
    return PromotionResult(mv, pub, rendered, com)
