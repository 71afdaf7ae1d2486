"""What the subcommands share: the subparser factory, ``--set`` and ``--tracking-uri``, config-error printing."""

from __future__ import annotations

import argparse
import shlex
import sys


def add_command(sub, name: str, help: str, examples: str) -> argparse.ArgumentParser:
    """A subcommand's parser with its one-line help and its examples."""
    return sub.add_parser(
        name,
        help=help,
        description=help,
        epilog=f"examples:\n{examples}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def add_set(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key (dotted, as in YAML; value parsed as YAML); repeatable",
    )


def add_tracking(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--tracking-uri", default=None, help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else local)"
    )


def print_config_error(path: str | None, err: Exception) -> None:
    """Every problem of a ``ConfigError``, one per line, after a line that counts them."""
    errors = getattr(err, "errors", [])
    n = len(errors)
    print(f"error: {path or 'the configuration'} has {n} problem{'s' if n != 1 else ''}:", file=sys.stderr)
    for key, msg in errors:
        print(f"  {key}: {msg}" if key else f"  {msg}", file=sys.stderr)


def resume_command(command: str, file: str, sets: list[str]) -> str:
    """The command line that continues an interrupted ``harness run`` / ``harness sweep``: same file, same --set."""
    return " ".join(["harness", command, shlex.quote(file), *(f"--set {shlex.quote(s)}" for s in sets), "--resume"])
