"""Reconcile at scale: a no-change reconcile of 200 and 2,000 models, against the seed's watcher.

    .venv/bin/python bench/reconcile_scale.py [--sizes 200 2000] [--reps 3] [--seed-max 200]

On a fresh local stack, registered models are created directly (no training): the first of a
size through the registry's REST API, the others as copies of its rows in the server's SQLite
database (see create_models). Each has 3 versions whose `source` is one tiny shared model folder in
the tracking server's artifact store (moto's S3), alias `staging` on version 2 and `production` on version 3. The GitOps
remote is brought in sync without running 2 × N promotions: every folder is rendered as
``render_folder`` renders it and all are committed at once, and the referenced versions of the
models the seed's watcher visits are published with ``publish_version``.

Seeding 2,000 models stays fast because the bench does only what the figures need: the seed's
watcher (28 s a pass at 200 models, growing with the models) runs at sizes up to ``--seed-max``
only, so only those models' copies are published (a no-change reconcile never reads the object
store: steps/plan.py); and the models' folders are rendered from one rendered folder per
environment with the model's name substituted, which is checked to equal ``render_folder``'s own
output for a sample of models (bench names have one length and are their own slugs).

Then, with NOTHING changed, the same registry is reconciled by

- mlferry: `mlferry reconcile` as a user types it, a new process in the folder holding
  mlferry.yaml, with the stack's environment: its run of the `mlferry-reconcile`
  WorkflowTemplate on the local executor (the plan step forked from the command's warm
  server, then no promotion), timed as Argo times a Workflow, and the command's own wall time
  (Python, building the templates); and, for the breakdown, the plan step's logic in this
  process (list the registry, read the repo);
- the baseline: bench/seed_watcher.py, a re-implementation of the seed's watcher, which
  re-renders, HEADs and commits every model and alias on every pass.

Registry requests are counted from the MLflow server's access log and S3 requests from moto's,
so requests made by step subprocesses count too; commits are counted on the remote. Growth
factors compare the largest size with the smallest. Last, one alias is moved and mlferry's
reconcile is run once more: it should promote exactly that one.
"""

from __future__ import annotations

import argparse
import random
import re
import subprocess
import sys
from urllib.parse import urlsplit
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import (LogCounter, Report, git_commit_count, local_stack, median, registry_requests,  # noqa: E402
                      s3_requests, say, scratch_dir, stop_on_sigterm, timed)

VERSIONS = 3
PAGE = 1000  # registry.list_models' page size (MLflow's largest): requests should follow pages, not models
GOAL_SIZE, GOAL_SECONDS = 2000, 2.0  # issue 19: a no-change reconcile of 2,000 models in under 2 s
ALIASES = {"staging": "2", "production": "3"}
MLMODEL = """artifact_path: model
flavors:
  python_function:
    loader_module: mlflow.sklearn
    model_path: model.pkl
    python_version: 3.11.7
  sklearn:
    pickled_model: model.pkl
    serialization_format: cloudpickle
    sklearn_version: 1.5.0
mlflow_version: 3.17.2
model_uuid: 0b8f0d5c2a3e4b7f9c1d2e3f4a5b6c7d
"""


def model_name(i: int) -> str:
    return f"bench-model-{i:04d}"


def main() -> int:
    stop_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[200, 2000])
    parser.add_argument("--reps", type=int, default=3, help="mlferry measurements at each size (median)")
    parser.add_argument("--seed-reps", type=int, default=1, help="seed watcher passes at each size (median)")
    parser.add_argument("--seed-max", type=int, default=200,
                        help="the seed's watcher runs at sizes up to this many models (a pass grows with the models)")
    args = parser.parse_args()
    sizes = sorted(args.sizes)
    if max(sizes) > 9999:
        parser.error("at most 9,999 models (bench names are bench-model-NNNN)")

    report = Report("reconcile_scale", "reconcile with nothing changed: mlferry vs the seed's watcher")
    with scratch_dir("reconcile-scale") as tmp:
        tmp = Path(tmp)
        with local_stack(tmp / "stack") as (stack, env):
            results = run(tmp, stack, env, sizes, args.reps, args.seed_reps, args.seed_max)
    summarize(report, results, sizes, args.reps, args.seed_reps)
    report.finish()
    return 0


def run(tmp: Path, stack, env: dict[str, str], sizes: list[int], reps: int, seed_reps: int, seed_max: int) -> dict:
    from mlflow import MlflowClient

    from mlferry.engine import load_run
    from mlferry.stack.s3 import s3_client
    from mlferry.steps.settings import load_settings
    from seed_watcher import SeedWatcher

    config = tmp / "mlferry.yaml"
    config.write_text("prune: true\n")  # the default environments: staging, production
    settings = load_settings(config, environ=env)
    s3 = s3_client(env["MLFLOW_S3_ENDPOINT_URL"], env)
    client = MlflowClient()
    source, source_run = upload_shared_model(client, s3)
    registry_log = LogCounter(stack.logs / "mlflow.log", LogCounter.MLFLOW)
    s3_log = LogCounter(stack.logs / "s3.log", LogCounter.S3)
    remote = stack.gitops_repo
    seed = None
    results: dict = {"sizes": {}}

    def measured(what: str, action):
        registry_log.mark(), s3_log.mark()
        before = git_commit_count(remote)
        with timed() as t:
            outcome = action()
        registry = registry_requests(registry_log.lines())
        return {"what": what, "seconds": t["seconds"], "registry_requests": sum(registry.values()),
                "registry_by_endpoint": registry, "s3": s3_requests(s3_log.lines()),
                "commits": git_commit_count(remote) - before, **outcome}

    def mlferry_reconcile() -> dict:
        """`mlferry reconcile` as typed: a new process, in the folder of mlferry.yaml."""
        command = subprocess.run([str(Path(sys.executable).with_name("mlferry")), "reconcile"], cwd=tmp, env=env,
                                 capture_output=True, text=True, timeout=600)
        found = re.search(r"\(run (mlferry-reconcile-\w+)\)", command.stdout)
        if command.returncode != 0 or not found:
            raise RuntimeError(f"mlferry reconcile exited {command.returncode}:\n{command.stdout[-2000:]}"
                               f"{command.stderr[-2000:]}")
        run = load_run(tmp / ".mlferry" / "runs", found.group(1))
        plan = run.task("plan")
        return {"promotions": int(plan.outputs.get("promotion_count", -1)),
                "removals": int(plan.outputs.get("removal_count", -1)),
                "unchanged": int(plan.outputs.get("unchanged", -1)), "plan_step_seconds": plan.duration,
                "run_seconds": run.duration}

    def mlferry_plan_in_process() -> dict:
        from mlferry.steps import gitops, layout, registry, rule
        from mlferry.steps.plan import deployed_state, plan_changes

        with timed() as listing:
            models = registry.list_models(registry.client())
        with timed() as reading:
            snapshot = gitops.read_snapshot(settings.gitops_repo, settings.gitops_branch, layout.team_prefix(settings.team))
        with timed() as desiring:
            desired = rule.selections(models, settings)
        with timed() as parsing:
            deployed = deployed_state(snapshot)  # reads the version annotations back from the YAML
        with timed() as planning:
            plan = plan_changes(desired, deployed, settings, settings.prune, snapshot.sha)
        return {"promotions": plan.promotion_count, "removals": plan.removal_count, "unchanged": plan.unchanged,
                "list_models_seconds": listing["seconds"], "read_snapshot_seconds": reading["seconds"],
                "desired_state_seconds": desiring["seconds"], "deployed_state_seconds": parsing["seconds"],
                "plan_changes_seconds": planning["seconds"]}

    def seed_pass() -> dict:
        done = seed.run_once()
        return {"entries": done.entries, "heads": done.heads, "copies": done.copies,
                "seed_commits": done.commits, "folders_changed": len(done.changed)}

    created = 0
    for size in sizes:
        with timed() as creating:
            create_models(stack.database, env["MLFLOW_TRACKING_URI"], source, source_run, range(created, size))
        with timed() as publishing:
            publish_referenced(env, settings, source, range(created, min(size, seed_max)))
        with timed() as syncing:
            sync_gitops(settings, range(created, size))
        setup = {"create_seconds": creating["seconds"], "publish_seconds": publishing["seconds"],
                 "render_and_commit_seconds": syncing["seconds"]}
        say(f"{size} models registered, published and in sync in git (setup: "
            + ", ".join(f"{k.removesuffix('_seconds')} {v:.0f} s" for k, v in setup.items()) + ")")
        created = size
        if seed is None and size <= seed_max:
            seed = SeedWatcher(settings, client, s3, tmp)
        check = measured("check", mlferry_plan_in_process)
        if check["promotions"] or check["removals"]:
            raise RuntimeError(f"setup left the repo out of sync: {check}")
        runs: dict[str, list[dict]] = {"mlferry_reconcile": [], "mlferry_plan": [], "seed_pass": []}
        # mlferry's side is cheap: measured `reps` times, with the (long) seed passes in between,
        # so that a burst of load on the shared machine does not land on one side only.
        order, seeds_left = [], seed_reps if size <= seed_max else 0
        for rep in range(reps):
            order += ["mlferry_reconcile", "mlferry_plan"]
            if seeds_left and rep < reps - 1:  # seed passes between mlferry's measurements, the rest at the end
                order.append("seed_pass")
                seeds_left -= 1
        order += ["seed_pass"] * seeds_left
        for what in order:
            action = {"mlferry_reconcile": mlferry_reconcile, "seed_pass": seed_pass,
                      "mlferry_plan": mlferry_plan_in_process}[what]
            result = measured(what, action)
            runs[what].append(result)
            say(f"  {size} models, {what:17}: {result['seconds']:6.2f} s, {result['registry_requests']:4} registry "
                f"requests, {result['s3']['total']:4} S3 requests ({result['s3']['objects_written']} uploads), "
                f"{result['commits']:3} commits")
        results["sizes"][size] = {**runs, "setup": setup, "pages": -(-size // PAGE)}

    # One alias moves: mlferry's reconcile promotes that one (and publishes the version).
    moved = model_name(min(7, sizes[-1] - 1))
    client.set_registered_model_alias(moved, "staging", "1")
    say(f"moved {moved}@staging from v{ALIASES['staging']} to v1 (not yet published)")
    results["changed"] = measured("mlferry_reconcile_one_alias_moved", mlferry_reconcile)
    c = results["changed"]
    say(f"  one alias moved, mlferry_reconcile: {c['seconds']:6.2f} s, {c['promotions']} promotion(s), "
        f"{c['registry_requests']} registry requests, {c['s3']['objects_written']} uploads, {c['commits']} commit(s)")
    results["changed_again"] = measured("mlferry_reconcile_after", mlferry_reconcile)
    return results


def upload_shared_model(client, s3) -> tuple[str, str]:
    """One tiny model folder that every version points at (MLmodel with flavors, a small pickle):
    (source, run id). It is a run's artifact, as a logged model is, so MLflow accepts it as the
    versions' `mlflow-artifacts:/` source and a promotion reads it through the tracking server
    (the resolve step has the registry's credentials, no S3 keys)."""
    run = client.create_run(client.create_experiment("bench-reconcile-scale"))
    source = f"{run.info.artifact_uri}/model"  # mlflow-artifacts:/<experiment>/<run>/artifacts/model
    key = urlsplit(source).path.strip("/")  # the server keeps mlflow-artifacts:/X at s3://mlflow-artifacts/X
    files = {"MLmodel": MLMODEL.encode(), "model.pkl": random.Random(7).randbytes(4096),
             "requirements.txt": b"scikit-learn\n"}
    for name, body in files.items():
        s3.put_object(Bucket="mlflow-artifacts", Key=f"{key}/{name}", Body=body)
    client.set_terminated(run.info.run_id)
    return source, run.info.run_id


def create_models(database: Path, tracking_uri: str, source: str, run_id: str, indexes: range) -> None:
    """The first model, its versions and aliases through the registry's REST API; the others as copies
    of the rows the server wrote for it, straight into its SQLite database in one transaction.

    Through the API, 2,000 models are 12,000 requests to a one-worker server (minutes on this
    machine); the copies differ from what the server would write only in the name (and the times).
    """
    import requests
    from mlflow.store.model_registry.dbmodels.models import (
        SqlModelVersion, SqlRegisteredModel, SqlRegisteredModelAlias)
    from sqlalchemy import create_engine, insert, select

    if not len(indexes):
        return
    first = model_name(indexes[0])
    with requests.Session() as session:
        def post(endpoint: str, body: dict) -> None:
            session.post(f"{tracking_uri}/api/2.0/mlflow/{endpoint}", json=body, timeout=60).raise_for_status()

        post("registered-models/create", {"name": first})
        for _ in range(VERSIONS):
            post("model-versions/create", {"name": first, "source": source, "run_id": run_id})
        for alias, version in ALIASES.items():
            post("registered-models/alias", {"name": first, "alias": alias, "version": version})
    engine = create_engine(f"sqlite:///{database}")
    try:
        with engine.begin() as db:
            for model in (SqlRegisteredModel, SqlModelVersion, SqlRegisteredModelAlias):  # parents first
                table = model.__table__
                rows = [dict(row) for row in db.execute(select(table).where(table.c.name == first)).mappings()]
                copies = [{**row, "name": model_name(i)} for i in indexes[1:] for row in rows]
                if copies:
                    db.execute(insert(table), copies)
    finally:
        engine.dispose()


def publish_referenced(env: dict[str, str], settings, source: str, indexes: range) -> None:
    """What the promotions would have published: each version an alias points at."""
    from mlferry.steps.artifacts import open_source
    from mlferry.steps.naming import slugify
    from mlferry.steps.publish import publish_version
    from mlferry.steps.store import ObjectStore

    store = ObjectStore.from_env(settings.bucket, env, connections=16)

    def publish(job: tuple[int, str]) -> None:
        name = model_name(job[0])
        publish_version(open_source(source), store, name, job[1], slugify(name), files_at_once=1)

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(publish, [(i, v) for i in indexes for v in ALIASES.values()]))


def sync_gitops(settings, indexes: range) -> None:
    """Every (model, environment) folder as a promotion would render it, in one commit."""
    from mlferry.steps import gitops

    folders = dict(rendered_folders(settings, indexes))
    if folders:
        gitops.publish_folder(settings.gitops_repo, settings.gitops_branch,
                              gitops.FolderChange(folders=folders, message=f"bench: {len(folders)} folders in sync\n"))


def rendered_folders(settings, indexes: range):
    """(folder, files) of each model and environment, as ``render_folder`` renders them.

    render_folder takes tens of ms (it validates every manifest), minutes for 4,000 folders; so
    each environment is rendered once for a template model and the name substituted. Bench names
    all have one length and are their own slugs, so the substitution is exact: the first, a middle
    and the last model are rendered for real and must match, or the bench stops.
    """
    from mlferry.steps.naming import slugify
    from mlferry.steps.render import RenderInput, render_folder

    def real(name: str, env: str, version: str):
        rendered = render_folder(RenderInput(model=name, version=version, slug=slugify(name), env=env), settings)
        return rendered.folder, dict(rendered.files)

    template = model_name(9999)
    assert slugify(template) == template
    by_env = {env: real(template, env, version) for env, version in ALIASES.items()}
    samples = {indexes[0], indexes[len(indexes) // 2], indexes[-1]} if len(indexes) else set()
    for i in indexes:
        name = model_name(i)
        for env, (folder, files) in by_env.items():
            made = (folder.replace(template, name), {k: v.replace(template, name) for k, v in files.items()})
            if i in samples and made != real(name, env, ALIASES[env]):
                raise RuntimeError(f"substituting {name} into the template's folder differs from render_folder's")
            yield made


def summarize(report: Report, results: dict, sizes: list[int], reps: int, seed_reps: int) -> None:
    small, large = sizes[0], sizes[-1]

    def runs(size: int, what: str) -> list[dict]:
        return results["sizes"][size][what]

    def med(size: int, what: str, key: str) -> float | None:
        found = runs(size, what)
        return median([r[key] for r in found]) if found else None

    def s3_med(size: int, what: str, kind: str) -> float | None:
        found = runs(size, what)
        return median([r["s3"][kind] for r in found]) if found else None

    for size in sizes:
        ml, seed = med(size, "mlferry_reconcile", "seconds"), med(size, "seed_pass", "seconds")
        if seed is not None:
            report.add(f"{size} models: no-change wall time (median of {reps} / {seed_reps})", ml, seed, seed / ml,
                       "≥ 1.00x (seed/mlferry)", seed / ml >= 1.0, unit="s")
        if size >= GOAL_SIZE or seed is None:
            run = med(size, "mlferry_reconcile", "run_seconds")
            report.add(f"{size} models: no-change `mlferry reconcile`, its run (median of {reps})", run, None,
                       None, f"< {GOAL_SECONDS:.0f} s" if size >= GOAL_SIZE else "",
                       run < GOAL_SECONDS if size >= GOAL_SIZE else None, unit="s")
        report.add(f"{size} models: the command as typed, wall time (a new process: Python, the templates, the run)",
                   ml, None, None, "", None, unit="s")
        report.add(f"{size} models: of which the plan step's process", med(size, "mlferry_reconcile", "plan_step_seconds"),
                   None, None, "", None, unit="s")
        report.add(f"{size} models: plan logic in-process (list + read git + diff)", med(size, "mlferry_plan", "seconds"),
                   None, None, "", None, unit="s")
        report.add(f"{size} models: of which list registry / read git / parse YAML",
                   " / ".join(f"{med(size, 'mlferry_plan', k):.2f}" for k in
                              ("list_models_seconds", "read_snapshot_seconds", "deployed_state_seconds")) + " s",
                   None, None, "", None)
        pages = results["sizes"][size]["pages"]
        ml_req, seed_req = med(size, "mlferry_reconcile", "registry_requests"), med(size, "seed_pass", "registry_requests")
        report.add(f"{size} models: registry requests ({pages} page{'s' * (pages != 1)} of {PAGE})", ml_req, seed_req,
                   seed_req / max(ml_req, 1) if seed_req is not None else None,
                   "= pages", ml_req == pages)
        ml_up, seed_up = s3_med(size, "mlferry_reconcile", "objects_written"), s3_med(size, "seed_pass", "objects_written")
        seed_s3 = f"{s3_med(size, 'seed_pass', 'total'):.0f} / {seed_up:.0f}" if seed_up is not None else None
        report.add(f"{size} models: S3 requests / uploads", f"{s3_med(size, 'mlferry_reconcile', 'total'):.0f} / {ml_up:.0f}",
                   seed_s3, None, "mlferry uploads = 0", ml_up == 0)
        ml_commits, seed_commits = med(size, "mlferry_reconcile", "commits"), med(size, "seed_pass", "commits")
        report.add(f"{size} models: commits", ml_commits, seed_commits, None, "mlferry = 0", ml_commits == 0)

    if large != small:
        factor = large / small
        growth = {what: (med(large, what, "seconds") / med(small, what, "seconds")
                         if runs(large, what) and runs(small, what) else None)
                  for what in ("mlferry_reconcile", "mlferry_plan", "seed_pass")}
        report.add(f"wall-time growth {small} -> {large} models ({factor:.0f}x models)", growth["mlferry_reconcile"],
                   growth["seed_pass"], None, "", None, unit="x")
        report.add(f"plan logic growth {small} -> {large} models", growth["mlferry_plan"], None, None, "", None, unit="x")
        pages = results["sizes"][large]["pages"] / results["sizes"][small]["pages"]
        req = med(large, "mlferry_reconcile", "registry_requests") / max(med(small, "mlferry_reconcile",
                                                                             "registry_requests"), 1)
        report.add(f"registry-request growth {small} -> {large} models", req, None, None,
                   f"grows with pages ({pages:.0f}x), not models ({factor:.0f}x)", req == pages, unit="x")

    changed = results["changed"]
    report.add(f"{large} models, one alias moved: promotions", changed["promotions"], None, None, "= 1",
               changed["promotions"] == 1)
    report.add(f"{large} models, one alias moved: commits / uploads",
               f"{changed['commits']} / {changed['s3']['objects_written']}", None, None, "commits = 1",
               changed["commits"] == 1)
    report.add(f"{large} models, one alias moved: wall time / registry requests",
               f"{changed['seconds']:.1f} s / {changed['registry_requests']}", None, None, "", None)
    again = results["changed_again"]
    report.add("the reconcile after it: promotions / commits", f"{again['promotions']} / {again['commits']}", None, None,
               "0 / 0", again["promotions"] == 0 and again["commits"] == 0)
    report.details = {
        "layout": {"versions_per_model": VERSIONS, "aliases": ALIASES, "environments": ["staging", "production"]},
        "reps": reps, "seed_reps": seed_reps, **results,
        "notes": ["mlferry_reconcile is `mlferry reconcile` in a new process: `seconds` is the command's wall time, "
                  "`run_seconds` its run's (the Workflow's start to its end, as Argo times it); the seed pass runs "
                  "in this process, its clone made beforehand",
                  "the seed's cost does not depend on what changed (it re-renders and commits everything), so it "
                  "is not re-run for the moved alias",
                  "the seed's watcher runs at sizes up to --seed-max only, and only those models' versions are "
                  "published: a no-change reconcile never reads the object store"],
    }


if __name__ == "__main__":
    sys.exit(main())
