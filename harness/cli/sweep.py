"""``harness sweep FILE``: every trial of a sweep on Ray Tune, one MLflow child run per trial."""

from __future__ import annotations

from harness.cli.common import add_command, add_set, add_tracking


def add(sub):
    p = add_command(
        sub,
        "sweep",
        "run every trial of a sweep file with Ray Tune, one MLflow child run per trial",
        "  harness sweep sweeps/fusion_layer.yaml\n"
        "  harness sweep sweeps/fusion_layer.yaml --address auto --storage /shared/ray_results",
    )
    p.add_argument("file", metavar="FILE", help="sweep YAML file")
    add_set(p)
    add_tracking(p)
    p.add_argument("--storage", default=None, metavar="DIR", help="Ray Tune storage path (shared on a cluster)")
    p.add_argument("--address", default=None, metavar="ADDR", help="Ray cluster address ('auto' = running cluster)")
    resume = "finish the unfinished trials of the last run of FILE (same --set) in their MLflow runs; none rerun"
    p.add_argument("--resume", action="store_true", help=resume)
    return p


def run(args) -> int:
    from harness.sweep.driver import sweep_file

    failed = sweep_file(args.file, args.set, args.tracking_uri, args.storage, args.address, args.resume)
    return 1 if failed else 0
