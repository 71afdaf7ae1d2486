"""``harness sweep FILE``: every trial of a sweep on Ray Tune, one MLflow child run per trial."""

from __future__ import annotations

import os
import sys
import traceback

from harness.cli.common import add_command, add_set, add_tracking, resume_command


def add(sub):
    p = add_command(
        sub,
        "sweep",
        "run every trial of a sweep file with Ray Tune, one MLflow child run per trial",
        "  harness sweep sweeps/fusion_layer.yaml\n"
        "  harness sweep sweeps/bottlenecks.yaml --set method.bottleneck_tokens=[1,4] --dry-run\n"
        "  harness sweep sweeps/fusion_layer.yaml --address auto --storage /shared/ray_results",
    )
    p.add_argument("file", metavar="FILE", help="sweep YAML file")
    add_set(p)
    add_tracking(p)
    p.add_argument("--storage", default=None, metavar="DIR", help="Ray Tune storage path (shared on a cluster)")
    p.add_argument("--address", default=None, metavar="ADDR", help="Ray cluster address ('auto' = running cluster)")
    resume = "finish the unfinished trials of the last run of FILE (same --set) in their MLflow runs; none rerun"
    p.add_argument("--resume", action="store_true", help=resume)
    p.add_argument("--yes", action="store_true", help="start a sweep of more than 1,000 trials without asking")
    p.add_argument("--dry-run", action="store_true", help="list the trials (one line each) and exit; nothing runs")
    p.add_argument("--verbose", action="store_true", help="Ray's own log lines and each failed trial's traceback")
    return p


def run(args) -> int:
    """Exit 0 (all finished), 1 (a trial failed, or MLflow kept failing: --resume writes what it missed), 130/143
    (SIGINT/SIGTERM: the unfinished trials wait for --resume)."""
    from harness.config import ConfigError
    from harness.run.signals import Interrupted
    from harness.sweep.resume import StoreUnavailable, SweepInterrupted

    if args.dry_run:
        from harness.sweep.space import dry_run

        return dry_run(args.file, args.set)
    if args.verbose:
        os.environ["HARNESS_VERBOSE"] = "1"
    if not args.address and not os.environ.get("RAY_ADDRESS"):
        from harness.sweep.local import loopback_only

        loopback_only()  # before Ray is imported (by the driver): a local Ray instance listens on 127.0.0.1 only
    from harness.sweep.driver import sweep_file

    again = resume_command("sweep", args.file, args.set)
    try:
        failed = sweep_file(args.file, args.set, args.tracking_uri, args.storage, args.address, args.resume, args.yes)
    except SweepInterrupted as e:
        print(f"{e}: {again}", file=sys.stderr, flush=True)
        return e.exit_code
    except Interrupted as e:  # before any trial ran
        fresh = again if args.resume else again.removesuffix(" --resume")
        print(f"{e} before the trials started; start it again: {fresh}", file=sys.stderr)
        return e.exit_code
    except StoreUnavailable as e:
        print(f"error: {e}; when it works again: {again}", file=sys.stderr, flush=True)
        return 1
    except Exception as e:  # the driver itself failed (a full --storage disk, a lost cluster): say so after the trace
        if isinstance(e, ConfigError):
            raise
        traceback.print_exc()
        print(f"error: the sweep stopped ({type(e).__name__}: {str(e)[:300]}); its runs are KILLED and its Ray Tune "
              f"state is kept: fix the cause, then {again}", file=sys.stderr, flush=True)  # fmt: skip
        return 1
    return 1 if failed else 0
