"""The ``harness`` command line: argparse only; one module per subcommand, each a thin call into the library.

Every subcommand module has ``add(sub)`` (its parser, with its examples) and ``run(args) -> int``. Heavy libraries
(torch, ray, mlflow, pandas) are imported inside ``run``, so ``harness ls`` is instant and ``harness validate`` never
starts Ray.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from harness import __version__
from harness.cli.common import print_config_error

COMMANDS = ("ls", "validate", "run", "sweep", "report", "profile", "ui", "prepare", "synth", "eval")

EPILOG = """\
examples:
  harness ls methods
  harness validate sweeps/fusion_layer.yaml --set train.epochs=1
  harness run run.yaml --set method.name=mbt --set method.fusion_layer=2
  harness sweep sweeps/fusion_layer.yaml --set seed=[0,1,2,3,4]     # more seeds: the replicates
  harness sweep sweeps/fusion_layer.yaml --address auto --storage /shared/ray_results
  harness report --sweep fusion_layer --out reports/fusion_layer.md
  harness eval RUN_ID --split val
  harness profile --preset mbt_b16_audioset
  harness ui --port 5000

Keys are spelled the same in YAML, --set and MLflow params (method.fusion_layer, train.lr, seed, ...).
Configuration errors are all reported at once, and the command exits with status 2.
"""


def build_parser() -> argparse.ArgumentParser:
    """The ``harness`` argument parser (exposed for the docs and the tests)."""
    parser = argparse.ArgumentParser(
        prog="harness",
        description="Compare audio-visual fusion methods fairly: one data pipeline, one training loop, one "
        "accounting of cost; sweeps on Ray, results in MLflow.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"harness.cli.{name}")
        module.add(sub).set_defaults(func=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``harness`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except Exception as e:
        config = sys.modules.get("harness.config")  # a ConfigError implies it is imported; `ls` stays light
        api = sys.modules.get("harness.api")
        if api is not None and isinstance(e, api.DatasetError):  # an empty split, a bad annotation file: no traceback
            print(f"error: {e}", file=sys.stderr)
            return 1
        if config is None or not isinstance(e, config.ConfigError):
            raise
        print_config_error(getattr(args, "file", None) or getattr(args, "spec", None), e)
        return 2


if __name__ == "__main__":
    sys.exit(main())
