"""`mlferry …`: the operator's command line.

Each command is a thin shell around a module: argument parsing and printing here, the work in
`mlferry.stack`, `mlferry.promotion`, the steps and the workflows.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Callable, Sequence

from mlferry.stack import DEFAULT_DIR, Stack, StackError
from steps.settings import SettingsError

log = logging.getLogger("mlferry")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    _setup_logging(args.verbose)
    try:
        return args.func(args) or 0
    except (StackError, SettingsError, LookupError, ValueError, RuntimeError, OSError) as err:
        print(f"mlferry: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("mlferry: interrupted", file=sys.stderr)
        return 130


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer", "mlflow", "alembic", "git"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mlferry", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)
    _stack_commands(commands)
    _promote_command(commands)
    return parser


# -- mlferry stack ----------------------------------------------------------------------------

def _stack_commands(commands) -> None:
    stack = commands.add_parser("stack", help="the local stack: MLflow, S3 and a GitOps remote on loopback")
    actions = stack.add_subparsers(dest="action", required=True)
    for name, func, text in (
        ("up", _stack_up, "start what is not running (idempotent) and wait until it answers"),
        ("down", _stack_down, "stop exactly the processes `up` started"),
        ("status", _stack_status, "show each part and its URL"),
        ("env", _stack_env, "print `export NAME=value` lines for the stack"),
    ):
        sub = actions.add_parser(name, help=text)
        sub.add_argument("--dir", default=DEFAULT_DIR, help=f"stack folder (default {DEFAULT_DIR})")
        if name == "up":
            sub.add_argument("--mlflow-port", type=int, default=None, help="0 picks a free port")
            sub.add_argument("--s3-port", type=int, default=None, help="0 picks a free port")
        sub.set_defaults(func=func)


def _stack(args) -> Stack:
    ports = {k: v for k, v in (("mlflow", getattr(args, "mlflow_port", None)),
                               ("s3", getattr(args, "s3_port", None))) if v is not None}
    return Stack(args.dir, ports=ports)


def _stack_up(args) -> None:
    _stack(args).up()
    print(f"ready: run `eval \"$(mlferry stack env --dir {args.dir})\"` to use it from this shell")


def _stack_down(args) -> None:
    _stack(args).down()


def _stack_status(args) -> int:
    rows = _stack(args).status()
    for part, state, where in rows:
        print(f"{part:8} {state:9} {where}")
    return 0 if all(state in ("running", "ready") for _, state, _ in rows) else 3


def _stack_env(args) -> None:
    for name, value in _stack(args).environment().items():
        print(f"export {name}={_shell_quote(value)}")


def _shell_quote(value: str) -> str:
    import shlex

    return shlex.quote(value)


def use_local_stack_if_unset(stack_dir: str) -> None:
    """Without MLFLOW_TRACKING_URI, a running local stack is the natural target."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return
    stack = Stack(stack_dir)
    if stack.state_file.exists():
        for name, value in stack.environment().items():
            os.environ.setdefault(name, value)


# -- mlferry promote --------------------------------------------------------------------------

def _promote_command(commands) -> None:
    sub = commands.add_parser("promote", help="promote one model version to one environment")
    sub.add_argument("model", help="registered model name")
    which = sub.add_mutually_exclusive_group(required=True)
    which.add_argument("--version", help="model version number")
    which.add_argument("--alias", help="registry alias, e.g. production")
    which.add_argument("--stage", help="legacy stage, e.g. Production")
    sub.add_argument("--env", required=True, help="target environment, e.g. production")
    sub.add_argument("--trigger", default="manual", help="why (recorded in the commit)")
    sub.add_argument("--config", help="mlferry.yaml (default: $MLFERRY_CONFIG or ./mlferry.yaml)")
    sub.add_argument("--stack-dir", default=DEFAULT_DIR, help="local stack used when MLFLOW_TRACKING_URI is unset")
    sub.set_defaults(func=_promote)


def _promote(args) -> None:
    from mlferry.promotion import PromotionRequest, promote

    use_local_stack_if_unset(args.stack_dir)
    if args.config:
        os.environ["MLFERRY_CONFIG"] = args.config
    result = promote(PromotionRequest(model=args.model, version=args.version or "", alias=args.alias or "",
                                      stage=args.stage or "", env=args.env, trigger=args.trigger),
                     progress=_print_progress)
    print(result.summary())


def _print_progress(line: str) -> None:
    print(line, flush=True)


Progress = Callable[[str], None]

if __name__ == "__main__":
    sys.exit(main())
