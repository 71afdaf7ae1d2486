"""``harness run FILE``: one trial without Ray, logged to MLflow (``harness.run.local``)."""

from __future__ import annotations

import sys

from harness.cli.common import add_command, add_set, add_tracking, resume_command


def add(sub):
    p = add_command(
        sub,
        "run",
        "train and evaluate one configuration (no Ray), logging to MLflow",
        "  harness run run.yaml --set method.name=late --set train.epochs=2",
    )
    p.add_argument("file", metavar="FILE", help="run YAML file")
    add_set(p)
    add_tracking(p)
    resume = "continue the interrupted run of FILE (same --set) from its last epoch, in the same MLflow run"
    p.add_argument("--resume", action="store_true", help=resume)
    return p


def run(args) -> int:
    from harness.config import ConfigError, RunSpec, load_config
    from harness.run.local import run_local
    from harness.run.signals import Interrupted

    spec = load_config(args.file, args.set)
    if not isinstance(spec, RunSpec):
        raise ConfigError([("search", f"{args.file} is a sweep; run it with `harness sweep {args.file}`")])
    try:
        run_local(spec, args.tracking_uri, args.resume)
    except Interrupted as e:  # 130 for SIGINT, 143 for SIGTERM; the MLflow run is KILLED
        print(f"{e}; continue with: {resume_command('run', args.file, args.set)}", file=sys.stderr, flush=True)
        return e.exit_code
    return 0
