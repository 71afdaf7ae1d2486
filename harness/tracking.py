"""MLflow, as ``docs/internals.md`` names it: experiment = sweep name, a parent run per sweep, a child run per trial.

One writer per store. ``harness run`` logs from its own process (``MlflowReporter``). In a sweep the trials never
touch MLflow: they report to Ray Tune, and the sweep driver's ``MlflowSweepCallback`` turns those reports into
child runs. So concurrent trials can never lock or corrupt a SQLite store, and workers on other nodes need no
route to it.

Params are the flattened resolved config (``method.fusion_layer``, ``train.lr``, ...), logged once per run. A resumed
trial reopens its run (``harness run --resume``: the run id from the checkpoint; a sweep: the child run tagged with the
Tune trial id) and logs each metric once per step: what the run already holds (:func:`logged_steps`) is skipped.
Tags: ``harness.sweep``, ``harness.sweep_hash``, ``harness.trial_id``, git SHA and dirty flag, versions, device.

Credentials never reach a param, tag, artifact or printed line: a tracking URI's ``user:password@`` is moved into
MLflow's own ``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD`` for an ``http(s)`` server
(:func:`tracking_uri`), and :func:`redact` strips it from whatever is logged or shown. A new SQLite store is created
under a file lock (:func:`open_client`), so two sweeps started at once cannot race in MLflow's schema migration.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import traceback
from contextlib import contextmanager
from pathlib import Path

from harness.config import RunSpec, flatten

# MLflow rejects params longer than this; longer values are cut with a marker.
_MAX_PARAM = 6000


_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/@\s'\"]+)@")


def redact(text: str) -> str:
    """``text`` with the credentials of every URI in it removed: ``http://user:pw@host`` -> ``http://host``."""
    return _USERINFO.sub(lambda m: m["scheme"], text)


def tracking_uri(explicit: str | None = None) -> str:
    """``--tracking-uri``, else ``$MLFLOW_TRACKING_URI``, else MLflow's own default: ./mlflow.db in the cwd.

    The default is spelled as an absolute ``sqlite:///`` path so that processes in other working directories
    (Ray trials chdir into their trial folders) open the same store. An ``http(s)`` URI with ``user:password@``
    comes back without them: they go to ``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD`` (unless those are
    set), which is how MLflow authenticates to a server; set those rather than writing a password in a file. A
    database URI keeps its credentials (SQLAlchemy needs them there) and is only shown through :func:`redact`.
    """
    uri = explicit or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        return f"sqlite:///{Path.cwd() / 'mlflow.db'}"
    m = _USERINFO.match(uri)
    if m and m["scheme"].lower() in ("http://", "https://"):
        from urllib.parse import unquote

        user, _, password = m["userinfo"].partition(":")
        os.environ.setdefault("MLFLOW_TRACKING_USERNAME", unquote(user))
        if password:
            os.environ.setdefault("MLFLOW_TRACKING_PASSWORD", unquote(password))
        print("note: the tracking URI's credentials are used through MLFLOW_TRACKING_USERNAME/PASSWORD and never "
              "logged; set those instead of writing them in the URI", file=sys.stderr)  # fmt: skip
        return redact(uri)
    return uri


def missing_store(uri: str) -> str | None:
    """Why ``uri`` names no store yet (a SQLite file that does not exist), naming it; None when it may exist.

    ``harness report`` and ``harness ui`` read a store: they say so instead of creating an empty one where they run.
    """
    if not uri.startswith("sqlite:///") or uri.startswith("sqlite:///:memory:"):
        return None
    db = Path(uri.removeprefix("sqlite:///").split("?")[0])
    if db.is_file():
        return None
    default = "" if os.environ.get("MLFLOW_TRACKING_URI") else " (the default: mlflow.db in the current directory)"
    return (
        f"no MLflow store at {db}{default}; run from the directory the sweep ran in, or pass --tracking-uri "
        "(or set MLFLOW_TRACKING_URI) to the store `harness sweep` printed"
    )


def artifact_location(uri: str, experiment: str) -> str | None:
    """Where a new experiment's artifacts go: ``<store folder>/mlartifacts/<experiment>`` beside a SQLite store (not
    ``./mlruns`` of whatever directory a command runs in); None (the server's own choice) for other stores."""
    if not uri.startswith("sqlite:///") or uri.startswith("sqlite:///:memory:"):
        return None
    db = Path(uri.removeprefix("sqlite:///").split("?")[0])
    return (db.parent / "mlartifacts" / re.sub(r"[^\w.-]+", "_", experiment)).resolve().as_uri()


def open_client(uri: str):
    """An ``MlflowClient`` on ``uri`` whose store exists: a SQLite file is created (MLflow's schema migration) under
    an exclusive lock on ``<file>.lock``, so processes that start on a new store at once do not race."""
    from mlflow.tracking import MlflowClient

    if not uri.startswith("sqlite:///") or uri.startswith("sqlite:///:memory:"):
        return MlflowClient(uri)
    from filelock import FileLock

    db = Path(uri.removeprefix("sqlite:///").split("?")[0])
    db.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{db}.lock"):
        client = MlflowClient(uri)
        client.search_experiments(max_results=1)  # the store is created (or migrated) by its first use
    return client


# Distributions a number depends on besides torch: the model code (timm, peft), the training (ray, deepspeed), the
# audio and video decoding (torchaudio, torchcodec, av), arrays and weights files (numpy, safetensors). Every run is
# tagged harness.<name>_version, as peft's method_comparison records its environment with each result.
VERSIONED = ("timm", "peft", "ray", "deepspeed", "torchaudio", "torchcodec", "av", "numpy", "safetensors")


def package_versions() -> dict[str, str]:
    """``harness.<name>_version`` of every :data:`VERSIONED` distribution, from its installed metadata (nothing is
    imported); ``not installed`` where it is absent."""
    from importlib.metadata import PackageNotFoundError, version

    tags = {}
    for name in VERSIONED:
        try:
            tags[f"harness.{name}_version"] = version(name)
        except PackageNotFoundError:
            tags[f"harness.{name}_version"] = "not installed"
    return tags


def code_tags(source: str | None = None) -> dict[str, str]:
    """Git SHA and dirty flag of the harness checkout, and the versions of what a number depends on; MLflow's own
    source tags too (``mlflow.source.git.commit``, ``mlflow.source.name``: ``source`` or the command line,
    ``mlflow.source.type``), which fill the UI's Source column."""
    import mlflow
    import torch

    import harness

    root = Path(harness.__file__).resolve().parent.parent
    tags = {"harness.version": harness.__version__, "harness.torch_version": torch.__version__,
            "harness.mlflow_version": mlflow.__version__, **package_versions()}  # fmt: skip
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10)  # fmt: skip
        if sha.returncode == 0:
            tags["harness.git_sha"] = tags["mlflow.source.git.commit"] = sha.stdout.strip()
            tags["harness.git_dirty"] = str(bool(dirty.stdout.strip())).lower()
    except (OSError, subprocess.SubprocessError):
        pass
    cli = Path(sys.argv[0]).stem in ("harness", "__main__")  # `harness sweep FILE`, `python -m harness.cli ...`
    tags["mlflow.source.name"] = redact(source or (" ".join(["harness", *sys.argv[1:3]]) if cli else sys.argv[0]))
    tags["mlflow.source.type"] = "LOCAL"
    return tags


def log_dataset(client, run_id: str, tags: dict[str, str], name: str) -> None:
    """``mlflow.log_input`` of the data a run trained on, from its data tags (:func:`harness.run.trial.run_tags`):
    digest = the manifest hash (a prepared set) or the fingerprint, profile = the clip counts per split; the UI's
    Datasets column shows it. Nothing when the run has no data tag."""
    import json

    from mlflow.entities import Dataset, DatasetInput, InputTag

    digest = tags.get("harness.manifest_hash") or tags.get("harness.dataset_fingerprint")
    if not digest:
        return
    counts = dict(kv.split("=", 1) for kv in tags.get("harness.split_counts", "").split() if "=" in kv)
    profile = json.dumps({"clips": {k: int(v) for k, v in counts.items()}, "decoder": tags.get("harness.decoder")})
    source = json.dumps({"card": name, "fingerprint": tags.get("harness.dataset_fingerprint")})
    dataset = Dataset(name=name, digest=digest[:36], source_type="harness", source=source, profile=profile)
    client.log_inputs(run_id, datasets=[DatasetInput(dataset, [InputTag("mlflow.data.context", "train")])])


def run_params(spec_dict: dict) -> dict[str, str]:
    """MLflow params: the flattened resolved config, values as strings (``null`` for None)."""
    out = {}
    for k, v in flatten(spec_dict).items():
        s = "null" if v is None else redact(str(v))
        out[k] = s if len(s) <= _MAX_PARAM else s[: _MAX_PARAM - 3] + "..."
    return out


# MLflow's UI shows an experiment of this kind in its model-training view (runs, metrics, charts), not the GenAI one.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def experiment_id(client, name: str) -> str:
    """The id of experiment ``name``, created (artifacts beside a SQLite store, the model-training kind) if new."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        return exp.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_location(client.tracking_uri, name),
                                        tags=EXPERIMENT_KIND)  # fmt: skip
    except Exception:  # created meanwhile by another process
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def error_summary(text: str) -> str:
    """The line that names the exception (``pkg.NonFiniteLossError: train/loss is nan ...``), class unqualified."""
    lines = [
        ln.strip() for ln in text.strip().splitlines() if re.match(r"^[\w.]+(Error|Exception|Interrupt)\b", ln.strip())
    ]
    line = lines[-1] if lines else text.strip().splitlines()[-1]
    head, _, rest = line.partition(":")
    return f"{head.rsplit('.', 1)[-1]}:{rest}" if rest else line


def log_failure(client, run_id: str, error: BaseException | str) -> None:
    """Mark ``run_id`` FAILED with its error as a tag and an ``error.txt`` artifact; what was logged stays."""
    text = error if isinstance(error, str) else "".join(traceback.format_exception(error))
    client.set_tag(run_id, "harness.error", error_summary(text)[:5000] if text.strip() else "unknown error")
    client.log_text(run_id, text, "error.txt")
    client.set_terminated(run_id, status="FAILED")


class MlflowReporter:
    """A trial's reporter that logs straight to MLflow (``harness run``): one top-level run per trial."""

    def __init__(self, client, run_id: str, uri: str, experiment: str, logged: set | None = None):
        self.client, self.run_id, self.uri, self.experiment = client, run_id, uri, experiment
        self.logged: set[tuple[str, int]] = logged if logged is not None else set()  # (metric, step) in the run
        self.dataset = "dataset"  # the card's name, for mlflow.log_input

    @classmethod
    @contextmanager
    def open(cls, spec: RunSpec, uri: str | None = None, parent_run_id: str | None = None, tags: dict | None = None,
             run_id: str | None = None, run_name: str | None = None):  # fmt: skip
        """Start a run for ``spec``, or reopen ``run_id`` (a resumed trial: params not logged again); it ends
        FINISHED, or FAILED with the error if the block raises."""
        uri = tracking_uri(uri or spec.tracking.uri)
        client = open_client(uri)
        experiment = spec.tracking.experiment or spec.name
        if run_id is not None:
            reopen_run(client, run_id)
            self = cls(client, run_id, uri, experiment, logged_steps(client, run_id))
        else:
            exp_id = experiment_id(client, experiment)
            name = run_name or f"{spec.name}-{spec.method.name}-s{spec.seed}"
            all_tags = {**code_tags(), **(tags or {}), "mlflow.runName": name}
            if parent_run_id:
                all_tags["mlflow.parentRunId"] = parent_run_id
            run = client.create_run(exp_id, tags=all_tags)
            self = cls(client, run.info.run_id, uri, experiment)
            log_params(client, self.run_id, run_params(spec.to_dict()))
        self.dataset = spec.dataset.name
        try:
            yield self
        except KeyboardInterrupt:  # SIGINT/SIGTERM (harness.run.signals): stopped, not failed; --resume continues
            client.set_tag(self.run_id, "harness.interrupted", "true")
            client.set_terminated(self.run_id, status="KILLED")
            raise
        except BaseException as e:
            log_failure(client, self.run_id, e)
            raise
        client.set_terminated(self.run_id, status="FINISHED")

    def start(self, info: dict) -> None:
        for key, value in info["tags"].items():
            self.client.set_tag(self.run_id, key, value)
        log_dataset(self.client, self.run_id, info["tags"], self.dataset)
        log_metrics(self.client, self.run_id, info["metrics"], step=0, logged=self.logged)

    def report(self, metrics: dict[str, float], step: int) -> None:
        log_metrics(self.client, self.run_id, metrics, step, logged=self.logged)


def reopen_run(client, run_id: str) -> None:
    """Mark ``run_id`` RUNNING again for a resumed trial, dropping the error (or interruption) of an earlier try."""
    run = client.get_run(run_id)
    for tag in ("harness.error", "harness.interrupted"):
        if tag in run.data.tags:
            client.delete_tag(run_id, tag)
    client.update_run(run_id, status="RUNNING")


def run_history(client, run_id: str) -> dict[int, dict[str, float]]:
    """What ``run_id`` holds: step -> {metric: value} (the last value where a step was logged twice)."""
    history: dict[int, dict[str, float]] = {}
    for key in client.get_run(run_id).data.metrics:
        for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.timestamp):
            history.setdefault(m.step, {})[key] = m.value
    return history


def logged_steps(client, run_id: str) -> set[tuple[str, int]]:
    """Every (metric, step) that ``run_id`` holds: what a resumed trial must not log again."""
    return {(key, step) for step, metrics in run_history(client, run_id).items() for key in metrics}


def log_params(client, run_id: str, params: dict[str, str]) -> None:
    from mlflow.entities import Param

    items = list(params.items())
    for i in range(0, len(items), 100):  # MLflow's batch limit
        client.log_batch(run_id, params=[Param(k, v) for k, v in items[i : i + 100]])


def log_metrics(client, run_id: str, metrics: dict, step: int, logged: set | None = None) -> None:
    """Log the numeric, finite-or-not metrics with a ``/`` in their name (``epoch`` and ``lr`` too).

    ``logged``: the (metric, step) pairs the run holds already; those are skipped, the new ones added to the set.
    """
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    batch = [Metric(k, float(v), now, step) for k, v in metrics.items()
             if isinstance(v, int | float) and (logged is None or (k, step) not in logged)]  # fmt: skip
    if batch:
        client.log_batch(run_id, metrics=batch)
    if logged is not None:
        logged.update((m.key, step) for m in batch)


def learning_curves(history: dict[int, dict[str, float]]) -> list[dict[str, float]]:
    """Per-epoch rows ``{"epoch", "train/loss", "val/<metric>", ...}`` from a run's reports keyed by step.

    Only the steps that carry a ``train/*`` or ``val/*`` figure are epochs (the cost at step 0 before training and
    the final ``test/*`` step are not); rows are in epoch order.
    """
    rows = []
    for step in sorted(history):
        curve = {k: float(v) for k, v in history[step].items() if k.startswith(("train/", "val/"))}
        if curve:
            rows.append({"epoch": float(step), **curve})
    return rows


def log_learning_curves(client, run_id: str, history: dict[int, dict[str, float]]) -> bool:
    """Log ``curves.csv`` and ``curves.png`` (train loss | validation metrics per epoch) as artifacts of ``run_id``.

    Uses matplotlib's object API on the Agg canvas (no pyplot state in the sweep driver). Returns False, logging
    nothing, when ``history`` holds no epoch.
    """
    import csv
    import tempfile

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    rows = learning_curves(history)
    if not rows:
        return False
    columns = ["epoch", *sorted({k for r in rows for k in r} - {"epoch"})]
    fig = Figure(figsize=(6.4, 2.6))
    FigureCanvasAgg(fig)
    loss_ax, val_ax = fig.subplots(1, 2)
    epochs = [r["epoch"] for r in rows]
    for ax, prefix in ((loss_ax, "train/"), (val_ax, "val/")):
        for name in (c for c in columns if c.startswith(prefix)):
            ax.plot(epochs, [r.get(name, float("nan")) for r in rows], marker="o", ms=3, label=name)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    loss_ax.set_title("training", fontsize=9)
    val_ax.set_title("validation", fontsize=9)
    fig.tight_layout()
    with tempfile.TemporaryDirectory(prefix="harness-curves-") as tmp:
        with open(Path(tmp) / "curves.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, columns, restval="")
            writer.writeheader()
            writer.writerows({**r, "epoch": int(r["epoch"])} for r in rows)
        fig.savefig(Path(tmp) / "curves.png", dpi=80)
        client.log_artifacts(run_id, tmp)
    return True


def _latest_sweep(uri: str) -> tuple[str, str, str] | None:
    """(experiment id, parent run id, sweep name) of the latest sweep invocation in the store, or None."""
    try:
        client = open_client(uri)
        exps = [e.experiment_id for e in client.search_experiments()]
        found = client.search_runs(exps, "tags.`harness.sweep` != ''", order_by=["attributes.start_time DESC"],
                                   max_results=200) if exps else []  # fmt: skip
    except Exception:  # the UI starts all the same
        return None
    parent = next((r for r in found if "mlflow.parentRunId" not in r.data.tags), None)
    if parent is None:
        return None
    return parent.info.experiment_id, parent.info.run_id, parent.data.tags["harness.sweep"]


def serve_ui(uri: str | None, host: str, port: int) -> int:
    """``harness ui``: the MLflow UI on the project's store, bound to ``host`` (127.0.0.1 by default); its exit code."""
    uri = tracking_uri(uri)
    if (missing := missing_store(uri)) is not None:
        print(f"error: {missing}", file=sys.stderr)
        return 1
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true",
           "DO_NOT_TRACK": "true"}  # fmt: skip
    base = f"http://{host}:{port}/#"
    print(f"MLflow UI for {redact(uri)} at {base}/experiments?workflowType=machine_learning  (Ctrl-C to stop)",
          flush=True)  # fmt: skip
    if (latest := _latest_sweep(uri)) is not None:  # its parent run: the summary of the sweep (harness.sweep.summary)
        exp, run, name = latest
        print(f"latest sweep '{name}': {base}/experiments/{exp}/runs/{run}?workflowType=machine_learning", flush=True)
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", host, "--port", str(port),
           "--workers", "1"]  # fmt: skip
    return subprocess.call(cmd, env=env)
