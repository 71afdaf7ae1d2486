"""``harness run FILE``: one trial without Ray, logged to MLflow (``harness.run.local``)."""

from __future__ import annotations

from harness.cli.common import add_command, add_set, add_tracking


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

    spec = load_config(args.file, args.set)
    if not isinstance(spec, RunSpec):
        raise ConfigError([("search", f"{args.file} is a sweep; run it with `harness sweep {args.file}`")])
    run_local(spec, args.tracking_uri, args.resume)
    return 0
