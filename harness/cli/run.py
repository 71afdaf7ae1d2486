"""``harness run FILE``: one trial without Ray, logged to MLflow (``harness.run.local``)."""

from __future__ import annotations

import sys

from harness.cli.common import add_command, add_set, add_tracking, resume_command


def add(sub):
    p = add_command(
        sub,
        "run",
        "train and evaluate one configuration (no Ray), logging to MLflow",
        "  harness run run.yaml --set method.name=late --set train.epochs=2\n"
        "  harness run sweeps/quickstart.yaml --set method.name=late --set train.epochs=2   # a sweep's base run",
    )
    p.add_argument("file", metavar="FILE", help="run YAML file (a sweep file: its base configuration)")
    add_set(p)
    add_tracking(p)
    resume = "continue the interrupted run of FILE (same --set) from its last epoch, in the same MLflow run"
    p.add_argument("--resume", action="store_true", help=resume)
    return p


def run(args) -> int:
    from harness.config import RunSpec, load_config
    from harness.run.local import run_local
    from harness.run.signals import Interrupted

    spec = load_config(args.file, args.set)
    if not isinstance(spec, RunSpec):  # a sweep file: its base configuration (a --set on a searched key picks it)
        trials = spec.num_trials
        spec = spec.resolve({})
        print(f"note: {args.file} is a sweep; running its base configuration ({spec.method.name}, seed {spec.seed}; "
              f"search: and tune: ignored). `harness sweep {args.file}` runs its {trials} trials",
              file=sys.stderr)  # fmt: skip
    try:
        run_local(spec, args.tracking_uri, args.resume)
    except Interrupted as e:  # 130 for SIGINT, 143 for SIGTERM; the MLflow run is KILLED
        print(f"{e}; continue with: {resume_command('run', args.file, args.set)}", file=sys.stderr, flush=True)
        return e.exit_code
    return 0
