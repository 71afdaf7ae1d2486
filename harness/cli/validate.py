"""``harness validate FILE...``: every problem of run and sweep files at once (exit 2), without training."""

from __future__ import annotations

from harness.cli.common import add_command, add_set, print_config_error


def add(sub):
    p = add_command(
        sub,
        "validate",
        "check run/sweep files (every problem at once; exit 2 on errors) without training",
        "  harness validate sweeps/fusion_layer.yaml\n"
        "  harness validate run.yaml --set method.fusion_layer=13     # on purpose: says what is allowed, exit 2",
    )
    p.add_argument("files", nargs="+", metavar="FILE", help="run or sweep YAML file(s)")
    add_set(p)
    return p


def run(args) -> int:
    from harness.config import ConfigError, RunSpec, load_config

    status = 0
    for path in args.files:
        try:
            spec = load_config(path, args.set)
        except ConfigError as e:
            print_config_error(path, e)
            status = 2
            continue
        kind = "run" if isinstance(spec, RunSpec) else f"sweep with {spec.num_trials} trials"
        print(f"{path}: ok ({kind})")
    return status
