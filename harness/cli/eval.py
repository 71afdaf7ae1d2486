"""``harness eval RUN_ID | CHECKPOINT``: score a trained model again, as a child run (``harness.run.evaluate``)."""

from __future__ import annotations

from harness.cli.common import add_command, add_set, add_tracking


def add(sub):
    p = add_command(
        sub,
        "eval",
        "score a trained model from its checkpoint (every view, each modality masked) and log a child run",
        "  harness eval 3f2a9c0d41e84b6f9a1e2b7c5d6e8f90                # an MLflow run of harness run or a sweep\n"
        "  harness eval .harness/checkpoints/run-1a2b3c4d5e6f --set dataset.test_clips=4\n"
        "  harness eval RUN_ID --split val --tracking-uri sqlite:////data/mlflow.db",
    )
    p.add_argument("target", metavar="RUN_ID|CHECKPOINT", help="MLflow run id, or a state.pt / a folder holding one")
    add_set(p)
    add_tracking(p)
    p.add_argument("--config", default=None, metavar="FILE", help="run file to rebuild the model from instead of "
                   "the spec the checkpoint carries (with --set applied to it)")  # fmt: skip
    p.add_argument("--split", default="test", choices=("test", "val", "train"), help="split to score (default test)")
    return p


def run(args) -> int:
    from harness.run.evaluate import run_eval

    run_eval(args.target, args.set, args.tracking_uri, args.config, args.split)
    return 0
