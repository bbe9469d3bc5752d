"""`mlferry …`: the operator's command line.

Each command is a thin shell around a module: argument parsing and printing here, the work in
`mlferry.stack`, `mlferry.promotion`, the steps and the workflows. It is one module of about 700
lines, in one section per command group, because every group shares the same option helpers
(stack folder, settings flags, --json), path resolution and step printer; splitting it would
spread those across files without separating any logic.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shlex
import sys
from pathlib import Path
from typing import MutableMapping, Sequence

from mlferry import __version__
from mlferry.stack import DEFAULT_DIR, Stack, StackError
from mlferry.steps.outcome import node_line
from mlferry.table import fit, pad
from mlferry.steps.settings import SettingsError

log = logging.getLogger("mlferry")

# The local stack's folder when no --stack-dir / --dir is given, so it is not repeated on every command.
STACK_DIR_ENV = "MLFERRY_STACK_DIR"
STACK_DIR_HELP = f"local stack folder (default ${STACK_DIR_ENV}, else {DEFAULT_DIR})"


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = _absolute_paths(parser.parse_args(argv))
    export_setting_flags(args, os.environ)
    _setup_logging(args.verbose)
    try:
        code = args.func(args) or 0
        sys.stdout.flush()  # inside the try: a reader that went away is caught below
        return code
    except BrokenPipeError:
        return _quiet_after_broken_pipe()
    except (StackError, SettingsError, LookupError, ValueError, RuntimeError, OSError) as err:
        print(f"mlferry: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("mlferry: interrupted", file=sys.stderr)
        return 130


def _absolute_paths(args: argparse.Namespace) -> argparse.Namespace:
    """Every folder and file a command was given, made absolute once, here at the edge: step
    processes run in their own folders, so a relative path would name another place there."""
    for name in ("stack_dir", "dir"):
        if hasattr(args, name):
            given = getattr(args, name) or os.environ.get(STACK_DIR_ENV) or DEFAULT_DIR
            setattr(args, name, Path(given).expanduser().resolve())
    for name in ("config", "out", "file"):
        if getattr(args, name, None):
            setattr(args, name, str(Path(getattr(args, name)).expanduser().resolve()))
    return args


def _quiet_after_broken_pipe() -> int:
    """`mlferry … | head` closed our stdout: that is the reader's choice, not an error. Point
    stdout at /dev/null so the interpreter's final flush does not complain either."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return 0


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer", "mlflow", "alembic", "git"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mlferry", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"mlferry {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    _stack_commands(commands)
    _promote_command(commands)
    _hold_commands(commands)
    _reconcile_command(commands)
    _submit_command(commands)
    _runs_commands(commands)
    _generate_command(commands)
    _events_commands(commands)
    _webhook_commands(commands)
    _operator_view_commands(commands)
    _applier_command(commands)
    _config_command(commands)
    return parser


# -- mlferry stack ----------------------------------------------------------------------------

def _stack_commands(commands) -> None:
    stack = commands.add_parser("stack", help="the local stack: MLflow, S3 and a GitOps remote on loopback")
    actions = stack.add_subparsers(dest="action", required=True)
    for name, func, text in (
        ("up", _stack_up, "start what is not running (idempotent), with the data kept by the last `down`"),
        ("down", _stack_down, "stop exactly the processes `up` started; the data is kept for the next `up`"),
        ("reset", _stack_reset, "stop the stack and delete its data (registry, S3 objects, GitOps repo, runs)"),
        ("status", _stack_status, "show each part and its URL, and where the data is kept"),
        ("env", _stack_env, "print `export NAME=value` lines for the stack"),
    ):
        sub = actions.add_parser(name, help=text)
        sub.add_argument("--dir", help=STACK_DIR_HELP)
        if name == "status":
            _json_option(sub)
        if name == "up":
            sub.add_argument("--mlflow-port", type=int, default=None,
                             help="default: the port used last time if free, else 5050; 0 picks a free port")
            sub.add_argument("--s3-port", type=int, default=None,
                             help="default: the port used last time if free, else 9050; 0 picks a free port")
            sub.add_argument("--restore-last-save", action="store_true",
                             help="the S3 server stopped without `down` saving its objects: start with the last save")
            sub.add_argument("--applier", action="store_true",
                             help="also run `mlferry applier` in the background: the GitOps repo's model servers, "
                                  "their status in DIR/applier/status.json (`down` stops them)")
        if name == "down":
            sub.add_argument("--purge", action="store_true",
                             help="delete the data (registry, S3 objects, GitOps repo, runs) instead of keeping it")
        sub.set_defaults(func=func)


def _stack(args) -> Stack:
    ports = {k: v for k, v in (("mlflow", getattr(args, "mlflow_port", None)),
                               ("s3", getattr(args, "s3_port", None))) if v is not None}
    return Stack(args.dir, ports=ports)


def _stack_up(args) -> None:
    _stack(args).up(restore_last_save=args.restore_last_save, applier=args.applier)
    print(f"ready: run `eval \"$(mlferry stack env --dir {shlex.quote(str(args.dir))})\"` to use it from this shell")


def _stack_down(args) -> None:
    _stack(args).down(purge=args.purge)


def _stack_reset(args) -> None:
    _stack(args).reset()


def _stack_status(args) -> int:
    import json

    stack = _stack(args)
    rows = stack.status()
    healthy = all(state in ("running", "ready") for _, state, _ in rows)
    if args.json:
        print(json.dumps({"dir": str(stack.dir), "healthy": healthy,
                          "parts": [{"part": part, "state": state, "where": where} for part, state, where in rows],
                          "data": {"state": "kept", "summary": stack.data_summary()}}, indent=2))
    else:
        for part, state, where in [*rows, ("data", "kept", stack.data_summary())]:
            print(f"{pad(part, 8)} {pad(state, 9)} {where}")
    return 0 if healthy else 3


def _stack_env(args) -> None:
    for name, value in _stack(args).environment().items():
        print(f"export {name}={shlex.quote(value)}")


def use_local_stack_if_unset(stack_dir: Path) -> None:
    """Without MLFLOW_TRACKING_URI, a running local stack is the natural target."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return
    stack = Stack(stack_dir)
    if stack.state_file.exists():
        try:
            found = stack.environment()
        except StackError as err:
            said = str(err).removesuffix("; run `mlferry stack up`")
            raise StackError(f"{said}; {stack_hint(stack_dir)}, or set MLFLOW_TRACKING_URI "
                             "and the other variables for your own servers") from None
        for name, value in found.items():
            os.environ.setdefault(name, value)


def stack_hint(stack_dir: Path) -> str:
    """The two commands that start the local stack and export it, with --dir when it is not the default."""
    default = Path(os.environ.get(STACK_DIR_ENV) or DEFAULT_DIR).expanduser().resolve()
    where = "" if Path(stack_dir) == default else f" --dir {shlex.quote(str(stack_dir))}"
    return f"run `mlferry stack up{where}` and `eval \"$(mlferry stack env{where})\"`"


@contextlib.contextmanager
def local_run_hints(stack_dir: Path):
    """A local run that cannot start for lack of variables says how to get them."""
    from mlferry.engine import ArgumentError

    try:
        yield
    except ArgumentError as err:
        if not err.unset_variables:
            raise
        raise ArgumentError(f"{err}; for the local stack {stack_hint(stack_dir)}, or export them",
                            err.unset_variables) from None


# -- mlferry promote / submit / runs / generate ----------------------------------------------

def _local_options(sub) -> None:
    sub.add_argument("--config", help="mlferry.yaml (default: $MLFERRY_CONFIG or ./mlferry.yaml)")
    sub.add_argument("--stack-dir", help=STACK_DIR_HELP + "; used when MLFLOW_TRACKING_URI is unset, "
                                          "and runs are kept in STACK_DIR/runs")
    _setting_flags(sub)


def _promote_command(commands) -> None:
    sub = commands.add_parser("promote", help="promote one model version to one environment")
    sub.add_argument("model", help="registered model name")
    which = sub.add_mutually_exclusive_group(required=True)
    which.add_argument("--version", help="model version number")
    which.add_argument("--alias", help="registry alias, e.g. production")
    which.add_argument("--stage", help="legacy stage, e.g. Production")
    sub.add_argument("--env", help="target environment, e.g. production "
                                   "(default: the one environment the alias or stage belongs to)")
    sub.add_argument("--trigger", default="manual", help="why (recorded in the commit)")
    sub.add_argument("--force", action="store_true",
                     help="deploy an alias of another environment to --env anyway, held there")
    sub.add_argument("--reason", default="", help="why, when the promotion is a hold (recorded in git and tags)")
    _promotion_options(sub, _promote)


def _promotion_options(sub, func, dry_run: bool = True) -> None:
    """What every command that runs a promotion takes: --dry-run, --json and the local-run options."""
    if dry_run:
        _dry_run_option(sub)
    _json_option(sub)
    _local_options(sub)
    sub.set_defaults(func=func)


def _promote(args) -> int:
    from mlferry.promotion import PromotionRequest

    use_local_stack_if_unset(args.stack_dir)
    env = args.env or _environment_of(args)
    request = PromotionRequest(model=args.model, version=args.version or "", alias=args.alias or "",
                               stage=args.stage or "", env=env, trigger=args.trigger, hold=args.reason,
                               force=args.force)
    return _run_promotion(args, request)


def _run_promotion(args, request) -> int:
    """`promote`, `hold`, `release`: one run of mlferry-promote (or, with --dry-run, its plan)."""
    import json

    from mlferry.promotion import promote

    if getattr(args, "dry_run", False):
        from mlferry.plans import preview_promotion

        preview = preview_promotion(_operator_view_settings(args), request)
        print(preview.line)
        return preview.exit_code
    with local_run_hints(args.stack_dir):
        result = promote(request, runs_root=args.stack_dir / "runs", config=args.config,
                         on_event=None if getattr(args, "json", False) else print_event)
    print(json.dumps(result.as_json(), indent=2) if getattr(args, "json", False) else result.summary())
    return 0


def _environment_of(args) -> str:
    """The environment an alias or stage selects a version for; --env is needed only for --version."""
    from mlferry.steps.settings import load_settings

    settings = load_settings(args.config)
    found = (settings.environment_for_alias(args.alias) if args.alias
             else settings.environment_for_stage(args.stage) if args.stage else None)
    if found:
        return found
    what = f"alias {args.alias!r}" if args.alias else f"stage {args.stage!r}" if args.stage else "--version"
    known = ", ".join(sorted(settings.environments))
    raise SettingsError(f"{what} belongs to no configured environment: give --env (one of {known})")


def _json_option(sub) -> None:
    sub.add_argument("--json", action="store_true", help="machine-readable output")


NAME_WIDTH = 48
# Argo's own bookkeeping: a `when` that kept a branch out, a task the DAG never needed.
_QUIET_PHASES = ("Skipped", "Omitted")


def print_event(event) -> None:
    """One line per task state change, like `argo watch`; Skipped and Omitted only with -v."""
    if event.phase in _QUIET_PHASES and not log.isEnabledFor(logging.DEBUG):
        return
    name = step_label(event.name)
    if event.phase in ("Running", "Pending") and event.duration is None:
        line = f"  {pad(name, NAME_WIDTH)} {event.phase}"
    else:
        took = f"{event.duration:6.1f}s" if event.duration is not None else ""
        line = f"  {pad(name, NAME_WIDTH)} {event.phase:<10} {took}"
    message = (node_line(event.message, event.phase, event.attempt + 1, event.retry)
               if event.phase not in ("Succeeded", "Omitted") else "")
    if message:
        line += f"  {fit(message, 200, middle=True)}"
    print(line, flush=True)


def step_label(name: str, width: int = NAME_WIDTH) -> str:
    """A node name that fits its column: a fan-out item shows as `promote(0: model vN env).step`,
    and a long model name loses its middle, never the version, environment or step."""
    import re

    found = re.match(r"^(.*?)\((\d+):([^()]*)\)(.*)$", name)
    fields = dict(part.split(":", 1) for part in found.group(3).split(",") if ":" in part) if found else {}
    if not found or not {"model", "version", "env"} <= fields.keys():
        return fit(name, width, middle=True)
    head, index, tail = found.group(1), found.group(2), found.group(4)
    rest = f" v{fields['version']} {fields['env']}){tail}"
    room = max(8, width - len(f"{head}({index}: ") - len(rest))
    return fit(f"{head}({index}: {fit(fields['model'], room, middle=True)}{rest}", width, middle=True)


def _hold_commands(commands) -> None:
    hold = commands.add_parser("hold", help="keep an environment at a version: webhooks and reconcile leave it "
                                            "until `mlferry release`")
    hold.add_argument("model", help="registered model name")
    hold.add_argument("--env", required=True, help="the environment to hold")
    hold.add_argument("--version", default="", help="the version to hold (default: the one git holds now)")
    hold.add_argument("--reason", required=True, help="why (recorded in git, on the objects and in the tags)")
    back = commands.add_parser("rollback", help="move an environment's alias back to an earlier version, "
                                                "and deploy it")
    back.add_argument("model", help="registered model name")
    back.add_argument("--env", required=True, help="the environment to roll back")
    back.add_argument("--to", default="", help="the version to restore (default: the one deployed before "
                                               "the current one, from the GitOps history)")
    back.add_argument("--reason", default="", help="why (recorded in the registry's tags)")
    _promotion_options(back, _rollback, dry_run=False)
    release = commands.add_parser("release", help="end an environment's hold: deploy what the rule selects")
    release.add_argument("model", help="registered model name")
    release.add_argument("--env", required=True, help="the held environment")
    _promotion_options(hold, _hold)
    _promotion_options(release, _release)


def _hold(args) -> int:
    from mlferry.promotion import PromotionRequest

    use_local_stack_if_unset(args.stack_dir)
    version = args.version or _deployed_version(args)
    return _run_promotion(args, PromotionRequest(model=args.model, env=args.env, version=version,
                                                 hold=args.reason, trigger="hold"))


def _deployed_version(args) -> str:
    """The version the environment's folder holds now: what `hold` keeps without --version."""
    from mlferry.steps.commit import current_owner
    from mlferry.steps.layout import gitops_folder
    from mlferry.steps.naming import slugify
    from mlferry.steps.settings import load_settings

    settings = load_settings(args.config)
    settings.environment(args.env)
    _, there = current_owner(settings.require_gitops_repo(), settings.gitops_branch,
                             gitops_folder(settings.team, slugify(args.model), args.env))
    if there is None or there.model != args.model:
        raise SettingsError(f"{args.model!r} has no folder in {args.env} to hold: give the version (--version)")
    return there.version


def _rollback(args) -> int:
    import json

    from mlferry.promotion import rollback

    use_local_stack_if_unset(args.stack_dir)
    with local_run_hints(args.stack_dir):
        result = rollback(args.model, args.env, to=args.to, reason=args.reason, runs_root=args.stack_dir / "runs",
                          config=args.config, on_event=None if args.json else print_event)
    print(json.dumps(result.as_json(), indent=2) if args.json else result.summary())
    return 0


def _release(args) -> int:
    from mlferry.promotion import PromotionRequest

    use_local_stack_if_unset(args.stack_dir)
    return _run_promotion(args, PromotionRequest(model=args.model, env=args.env, release=True, trigger="release"))


def _reconcile_command(commands) -> None:
    sub = commands.add_parser("reconcile", help="make the GitOps repo match the registry's aliases and stages")
    sub.add_argument("--prune", choices=["auto", "true", "false", "force"], default="auto",
                     help="remove folders nothing selects any more (auto: the settings decide; force: even "
                          "more than prune_max_share of them)")
    _dry_run_option(sub)
    _local_options(sub)
    sub.set_defaults(func=_reconcile)


def _dry_run_option(sub) -> None:
    sub.add_argument("--dry-run", action="store_true",
                     help="print the plan and change nothing; exit 0: nothing to do, 2: changes pending")


def _reconcile(args) -> int:
    from mlferry.local import LocalArgo

    use_local_stack_if_unset(args.stack_dir)
    if args.dry_run:
        from mlferry.plans import preview_reconcile

        text, code = preview_reconcile(_operator_view_settings(args), args.prune)
        print(text, end="")
        return code
    local = LocalArgo.from_environment(args.config, args.stack_dir / "runs")
    with local_run_hints(args.stack_dir):
        run = local.submit("workflowtemplate/mlferry-reconcile", {"prune": args.prune, "trigger": "reconcile"},
                           on_event=print_event)
    print(reconcile_summary(run))
    return 0 if run.phase == "Succeeded" else 1


def reconcile_summary(run) -> str:
    """What the plan found and how the fan-out ended, after the live table of a reconcile run."""
    from mlferry.plans import plan_lines, plan_lists

    tasks = {t.name: t for t in run.tasks}
    plan = tasks.get("plan")
    lists = plan_lists(plan.outputs if plan else {})
    commits = [t for t in run.tasks if t.name.startswith("promote(") and t.name.endswith(".commit")]
    promoted = sum(1 for t in commits if t.phase == "Succeeded" and t.outputs.get("changed") == "true")
    failed_items = {t.name.split(").", 1)[0] for t in run.tasks if t.name.startswith("promote(") and "." in t.name
                    and t.type == "Pod" and t.phase in ("Failed", "Error")}
    prune = tasks.get("prune")
    pruned = len(lists["removals"]) if prune and prune.phase == "Succeeded" else 0
    failed = len(failed_items) + sum(1 for t in (prune, plan) if t and t.phase in ("Failed", "Error"))
    unchanged = int((plan.outputs if plan else {}).get("unchanged") or 0) \
        + (len(lists["promotions"]) - promoted - len(failed_items))
    line = (f"reconcile {'done' if run.phase == 'Succeeded' else run.phase.lower()} in {run.duration or 0:.1f}s: "
            f"{promoted} promoted, {pruned} pruned, {len(lists['held'])} held, {len(lists['kept'])} kept, "
            f"{unchanged} unchanged, {failed} failed (run {run.run_id})")
    details = plan_lines({k: v for k, v in lists.items() if k != "promotions"})
    if run.phase != "Succeeded":
        from mlferry.promotion import failure_line

        details.append(f"  {step_label(failure_line(run), 200)}")
    return "\n".join([line, *details])


def _submit_command(commands) -> None:
    sub = commands.add_parser("submit", help="run a workflow locally, with the words of `argo submit`")
    sub.add_argument("file", nargs="?", help="a Workflow YAML file")
    sub.add_argument("--from", dest="source", help="workflowtemplate/NAME")
    sub.add_argument("-p", "--parameter", action="append", default=[], metavar="KEY=VALUE")
    sub.add_argument("--watch", action="store_true",
                     help="as `argo submit --watch`; a local run always waits and shows each step as it goes")
    _local_options(sub)
    sub.set_defaults(func=_submit)


def _submit(args) -> int:
    from mlferry.local import LocalArgo

    if bool(args.file) == bool(args.source):
        raise ValueError("give either a Workflow file or --from workflowtemplate/NAME")
    params = dict(_key_value(p) for p in args.parameter)
    use_local_stack_if_unset(args.stack_dir)
    local = LocalArgo.from_environment(args.config, args.stack_dir / "runs")
    with local_run_hints(args.stack_dir):
        run = local.submit(args.source or args.file, params, on_event=print_event)
    _print_run(run)
    return 0 if run.phase == "Succeeded" else 1


def _key_value(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise ValueError(f"parameter {text!r} must look like key=value")
    key, value = text.split("=", 1)
    return key, value


def _runs_commands(commands) -> None:
    runs = commands.add_parser("runs", help="local workflow runs: list, show")
    actions = runs.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="every local run, newest first")
    listing.add_argument("--stack-dir", help=STACK_DIR_HELP)
    _json_option(listing)
    listing.set_defaults(func=_runs_list)
    show = actions.add_parser("show", help="one run: tasks, phases, durations, outputs and logs")
    show.add_argument("run")
    show.add_argument("--stack-dir", help=STACK_DIR_HELP)
    show.add_argument("--no-logs", action="store_true")
    _json_option(show)
    show.set_defaults(func=_runs_show)
    logs = actions.add_parser("logs", help="a run's logs, all steps or one (like `argo logs`)")
    logs.add_argument("run")
    logs.add_argument("step", nargs="?", help="only this step (e.g. commit, or onExit.report-failure)")
    logs.add_argument("--stack-dir", help=STACK_DIR_HELP)
    logs.set_defaults(func=_runs_logs)


# Event parameters carry the signed webhook body: not for a table.
_HIDDEN_PARAMETERS = ("body", "signature", "timestamp", "delivery_id")


def _runs_list(args) -> None:
    import json

    from mlferry.engine import list_runs

    runs = list_runs(args.stack_dir / "runs")
    if args.json:
        print(json.dumps([_run_json(run) for run in runs], indent=2))
        return
    print(f"{pad('NAME', 36)} {pad('STATUS', 10)} {pad('STARTED', 20)} {'DURATION':>8}  PARAMETERS")
    for run in runs:
        params = " ".join(f"{k}={v}" for k, v in run.parameters.items() if v and k not in _HIDDEN_PARAMETERS)
        print(f"{pad(run.run_id, 36)} {pad(run.phase, 10)} {pad(run.started[:19], 20)} {run.duration or 0:>7.1f}s"
              f"  {params}")


def _run_json(run) -> dict:
    return {"name": run.run_id, "workflow": run.workflow, "phase": run.phase, "message": run.message,
            "started": run.started, "duration": run.duration,
            "parameters": {k: v for k, v in run.parameters.items() if k not in _HIDDEN_PARAMETERS},
            "outputs": run.outputs,
            "steps": [{"name": t.name, "phase": t.phase, "duration": t.duration, "message": t.message,
                       "outputs": t.outputs, "log": t.log} for t in run.tasks]}


def _runs_show(args) -> None:
    import json

    from mlferry.engine import load_run

    run = load_run(args.stack_dir / "runs", args.run)
    if args.json:
        print(json.dumps(_run_json(run), indent=2))
        return
    _print_run(run, logs=not args.no_logs)


def _runs_logs(args) -> None:
    from mlferry.engine import load_run

    run = load_run(args.stack_dir / "runs", args.run)
    tasks = [t for t in run.tasks if t.log and (args.step is None or t.name == args.step)]
    if args.step and not tasks:
        known = ", ".join(t.name for t in run.tasks if t.log) or "none"
        raise LookupError(f"run {run.run_id} has no step {args.step!r} with logs; steps with logs: {known}")
    for task in tasks:
        path = Path(task.log)
        text = path.read_text(errors="replace") if path.exists() else ""
        for line in text.splitlines():
            print(f"{task.name}: {line}" if args.step is None else line)


def _print_run(run, logs: bool = False) -> None:
    status = run.phase + (f"  {_run_message(run)}" if run.message else "")
    print(f"\nName:      {run.run_id}\nWorkflow:  {run.workflow}\nStatus:    {status}"
          f"\nDuration:  {run.duration or 0:.1f}s")
    for key, value in run.outputs.items():
        print(f"Output:    {key}={value}")

    print(f"\n{pad('STEP', NAME_WIDTH)} {pad('PHASE', 10)} {'DURATION':>8}  MESSAGE")
    for task in run.tasks:
        if task.phase in _QUIET_PHASES and not logs and not log.isEnabledFor(logging.DEBUG):
            continue
        message = (fit(node_line(task.message, task.phase, task.attempts), 160, middle=True)
                   if task.message and task.phase != "Succeeded" else "")
        print(f"{pad(step_label(task.name), NAME_WIDTH)} {pad(task.phase, 10)} {task.duration or 0:>7.1f}s  {message}")
    if logs:
        for task in run.tasks:
            if task.log and Path(task.log).exists():
                print(f"\n--- {task.name} ({task.log})")
                print(Path(task.log).read_text(errors="replace").rstrip())


def _run_message(run) -> str:
    """The run's one line: the first failed step and its own error, as `mlferry promote` says it."""
    from mlferry.promotion import failure_line

    return failure_line(run)


def _generate_command(commands) -> None:
    sub = commands.add_parser(
        "generate", help="the Argo YAML generated from the Hera definitions",
        description="Print the Argo objects as one YAML stream (as `helm template` does), or write one file "
                    "per object with --out. --check compares with --out DIR, or without --out with the "
                    "checkout's charts/mlferry/generated (what `make generate` writes).")
    sub.add_argument("--config", help="mlferry.yaml with a `bundle:` section (default: the built-in bundle)")
    sub.add_argument("--out", help="write one file per object into this folder instead of printing")
    sub.add_argument("--check", action="store_true", help="exit 1 with a diff when the folder's YAML is stale")
    sub.set_defaults(func=_generate)


def _generate(args) -> int:
    from mlferry.generate import GENERATED_DIR, render_files, stale_diff, to_stream, write
    from mlferry.workflows.bundle import Bundle, load_bundle

    files = render_files(load_bundle(args.config) if args.config else Bundle())
    if args.check:
        folder = Path(args.out) if args.out else _checked_in_folder(args.config, GENERATED_DIR)
        diff = stale_diff(files, folder)
        if diff:
            print(diff, end="")
            print(f"mlferry: the YAML in {folder} is stale; regenerate it with "
                  f"`mlferry generate{' --config ' + args.config if args.config else ''} --out {folder}`",
                  file=sys.stderr)
            return 1
        print(f"{folder}: {len(files)} files, current")
        return 0
    if not args.out:
        sys.stdout.write(to_stream(files))
        return 0
    for path in write(files, Path(args.out)):
        print(path)
    return 0


def _checked_in_folder(config: str | None, folder: Path) -> Path:
    if config:
        raise ValueError("--check with --config compares that bundle's YAML with a folder: give it as --out DIR")
    if not folder.is_dir():
        raise ValueError(f"no checked-in YAML at {folder} (not a source checkout): give the folder as --out DIR")
    return folder


# -- mlferry events / webhook -------------------------------------------------------------------

def _events_commands(commands) -> None:
    events = commands.add_parser("events", help="MLflow webhook events: the local receiver")
    actions = events.add_subparsers(dest="action", required=True)
    serve = actions.add_parser("serve", help="receive MLflow's alias webhooks and run each promotion locally")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8765, help="port to listen on (default 8765; 0 picks one)")
    _local_options(serve)
    serve.set_defaults(func=_events_serve)


def _events_serve(args) -> int:
    from mlferry.receiver import serve

    use_local_stack_if_unset(args.stack_dir)
    return serve(args.host, args.port, runs_root=args.stack_dir / "runs", config=args.config,
                 on_event=print_event if args.verbose else None)


def _webhook_commands(commands) -> None:
    hook = commands.add_parser("webhook", help="the MLflow webhook that sends alias events to mlferry")
    actions = hook.add_subparsers(dest="action", required=True)
    register = actions.add_parser("register", help="create or update (by name) the webhook for alias events")
    register.add_argument("--url", required=True, help="where MLflow posts, e.g. http://127.0.0.1:8765/mlflow")
    test = actions.add_parser("test", help="have MLflow send its test event and show the answer")
    for sub, func in ((register, _webhook_register), (test, _webhook_test)):
        sub.add_argument("--name", default="mlferry", help="webhook name (default mlferry)")
        sub.add_argument("--stack-dir", help=STACK_DIR_HELP + "; used when MLFLOW_TRACKING_URI is unset")
        sub.set_defaults(func=func)


def _webhook_register(args) -> None:
    from mlferry.webhooks import register, server_settings

    use_local_stack_if_unset(args.stack_dir)
    done = register(args.url, secret=os.environ.get("MLFERRY_WEBHOOK_SECRET", ""), name=args.name)
    print(f"{'created' if done.created else 'updated'} webhook {done.name} ({done.webhook_id}): "
          f"{', '.join(done.events)} -> {done.url}, signed with MLFERRY_WEBHOOK_SECRET")
    for webhook_id in done.removed:
        print(f"deleted duplicate webhook {webhook_id} of the same name")
    print("the MLflow server's environment (the local stack sets all of these):")
    for setting in server_settings(args.url):
        print(f"  {setting.name + '=' + setting.value:<52} {setting.need}: {setting.why}")


def _webhook_test(args) -> int:
    from mlferry.webhooks import send_test

    use_local_stack_if_unset(args.stack_dir)
    answer = send_test(args.name)
    if answer.status is None:
        print(f"webhook {answer.name} -> {answer.url}: no answer: {answer.error}")
    else:
        print(f"webhook {answer.name} -> {answer.url}: HTTP {answer.status} {answer.body.strip()}")
    return 0 if answer.success else 1


# -- mlferry status / history: the operator's view ---------------------------------------------

def _operator_view_commands(commands) -> None:
    status = commands.add_parser("status", help="every model in every environment: registry, git, object store, drift")
    status.add_argument("--env", default="", help="only this environment")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.add_argument("--check", action="store_true", help="exit 3 when anything drifts")
    history = commands.add_parser("history", help="a model's deployments, from the GitOps repo's git log")
    history.add_argument("model", help="registered model name")
    history.add_argument("--env", default="", help="only this environment (default: all)")
    history.add_argument("--json", action="store_true", help="machine-readable output")
    history.add_argument("--at", metavar="TIME",
                         help="which version served in --env at TIME, and who promoted it: ISO 8601 "
                              "(2026-12-04T10:00:00Z, '2026-12-04 10:00', 2026-12-04; UTC unless an offset is "
                              "given) or '2h ago', '3d ago'")
    for sub, func in ((status, _status), (history, _history)):
        sub.add_argument("--config", help="mlferry.yaml (default: $MLFERRY_CONFIG or ./mlferry.yaml)")
        sub.add_argument("--stack-dir", help=STACK_DIR_HELP + "; used when MLFLOW_TRACKING_URI is unset")
        _setting_flags(sub)
        sub.set_defaults(func=func)


def _operator_view_settings(args):
    from mlferry.steps.settings import load_settings

    use_local_stack_if_unset(args.stack_dir)
    if not args.verbose:  # progress and retry lines are noise in a report (status, a dry run); failures still say one line
        logging.getLogger("mlferry.steps.gitops").setLevel(logging.WARNING)
        logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)
    return load_settings(args.config)


def _status(args) -> int:
    import json

    from mlferry.fleet import fleet_status

    # A read-only report should fail in seconds, not after MLflow's minutes of retries.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    report = fleet_status(_operator_view_settings(args), env=args.env)
    print(json.dumps(report.as_json(), indent=2) if args.json else report.table(), end="\n" if args.json else "")
    return 3 if args.check and report.drifting else 0


def _history(args) -> None:
    import json

    from mlferry.history import FolderAt, model_history

    at = _history_time(args)  # before any clone: a mistyped time fails at once
    settings = _operator_view_settings(args)
    found = model_history(args.model, args.env, settings.team, settings.require_gitops_repo(), settings.gitops_branch)
    report = found if at is None else FolderAt.of(found, at)
    print(json.dumps(report.as_json(), indent=2) if args.json else report.table(), end="\n" if args.json else "")


def _history_time(args):
    """`--at` as an aware UTC datetime (None without it); it needs `--env`: one folder at one time."""
    from datetime import datetime, timezone

    from mlferry.history import parse_time

    if args.at is None:
        return None
    if not args.env:
        raise ValueError("--at needs --env: which environment's folder? "
                         f"(mlferry history {shlex.quote(args.model)} --env ENV --at {shlex.quote(args.at)})")
    return parse_time(args.at, datetime.now(timezone.utc).replace(microsecond=0))



# -- mlferry applier: Argo CD and the kubelet on a laptop ----------------------------------------

def _applier_command(commands) -> None:
    sub = commands.add_parser(
        "applier", help="run the GitOps branch's model servers locally and report them as Argo CD would",
        description="Follow the GitOps branch; run each folder's Deployment (the deployment runtime) as a local "
                    "`mlflow models serve` on a free loopback port; write each folder's revision, sync and "
                    "health to a status file ($MLFERRY_APPLIER_STATUS, else STACK_DIR/applier/status.json) "
                    "that `verify: local` and `mlferry status` read. Ctrl-C or SIGTERM stops every server it "
                    "started. `mlferry stack up --applier` runs it in the background.")
    sub.add_argument("--status-file", help="where to write the status (default $MLFERRY_APPLIER_STATUS, "
                                           "else STACK_DIR/applier/status.json)")
    sub.add_argument("--config", help="mlferry.yaml (default: $MLFERRY_CONFIG or ./mlferry.yaml)")
    sub.add_argument("--stack-dir", help=STACK_DIR_HELP + "; used when MLFLOW_TRACKING_URI is unset")
    _setting_flags(sub)
    sub.set_defaults(func=_applier)


def _applier(args) -> int:
    from mlferry.applier import Applier, serve_forever
    from mlferry.steps.local_status import default_status_path
    from mlferry.steps.settings import load_settings

    use_local_stack_if_unset(args.stack_dir)
    settings = load_settings(args.config)
    status = Path(args.status_file).resolve() if args.status_file else default_status_path(os.environ, args.stack_dir)
    return serve_forever(Applier(settings.require_gitops_repo(), settings.gitops_branch, status, dict(os.environ)))


# -- settings flags and `mlferry config` ---------------------------------------------------------
# One rule everywhere: flag > environment variable > mlferry.yaml (--config, else $MLFERRY_CONFIG,
# else ./mlferry.yaml) > default (steps/settings.py; docs/configuration.md).

# The settings a flag can set: field → help.
SETTING_FLAGS = {
    "team": "team name: the GitOps folder teams/TEAM and the namespaces TEAM-ENV",
    "bucket": "S3 bucket the models are copied into",
    "runtime": "how models are served",
    "serving_image": "container image that serves the models",
    "gitops_repo": "GitOps remote (URL or path)",
    "gitops_branch": "GitOps branch",
}


def _variable_of(field: str) -> str:
    from mlferry.steps.settings import ENV_VARS

    return next(var for var, name in ENV_VARS.items() if name == field)


def export_setting_flags(args: argparse.Namespace, environ: MutableMapping[str, str]) -> None:
    """The settings flags a command was given, as their MLFERRY_* variables in `environ`: the settings
    this process loads, the local run's bundle and every step process it starts read them the same
    way. The flag replaces the shell's variable, and variables win over the file, so the flag wins
    over both. Done once in `main`, never while parsing, so parsing has no side effect."""
    if not getattr(args, "export_settings", False):
        return
    for field in SETTING_FLAGS:
        value = getattr(args, field, None)
        if value is not None:
            environ[_variable_of(field)] = value


def _setting_flags(sub, export: bool = True) -> None:
    for field, text in SETTING_FLAGS.items():
        extra = {"choices": ["deployment", "kserve"]} if field == "runtime" else {}
        sub.add_argument("--" + field.replace("_", "-"), dest=field, default=None,
                         help=f"{text} (overrides ${_variable_of(field)} and mlferry.yaml)", **extra)
    sub.set_defaults(export_settings=export)


def _config_command(commands) -> None:
    sub = commands.add_parser(
        "config", help="the effective settings and where each value came from",
        description="Each setting, its value and its source, strongest first: a flag, an environment "
                    "variable, the file (--config, else $MLFERRY_CONFIG, else ./mlferry.yaml), the default. "
                    "Like `git config --list --show-origin`.")
    sub.add_argument("--config", help="mlferry.yaml (default: $MLFERRY_CONFIG or ./mlferry.yaml)")
    sub.add_argument("--stack-dir", help=STACK_DIR_HELP + "; its variables count when MLFLOW_TRACKING_URI "
                                          "is unset, as for promote")
    _json_option(sub)
    _setting_flags(sub, export=False)
    sub.set_defaults(func=_config)


def _config(args) -> None:
    import json

    from mlferry.steps.settings import load_settings_with_origins

    before = dict(os.environ)
    use_local_stack_if_unset(args.stack_dir)
    from_stack = {name for name in os.environ if name not in before}
    overrides = {field: getattr(args, field) for field in SETTING_FLAGS}
    settings, origins = load_settings_with_origins(args.config, overrides=overrides)
    values = settings.model_dump(mode="json")
    rows = []
    for field, (source, name) in origins.items():
        note = f"local stack {args.stack_dir}" if source == "variable" and name in from_stack else ""
        rows.append({"key": field, "value": values[field], "source": source, "name": name,
                     **({"note": note} if note else {})})
    if args.json:
        print(json.dumps({row.pop("key"): row for row in rows}, indent=2))
        return
    for row in rows:
        origin = f"{row['source']}:{row['name']}" if row["name"] else row["source"]
        value = row["value"] if isinstance(row["value"], str) else json.dumps(row["value"], separators=(",", ":"))
        note = f"  (from the {row['note']})" if "note" in row else ""
        print(f"{origin:<40} {row['key']}={value}{note}")


if __name__ == "__main__":
    sys.exit(main())
