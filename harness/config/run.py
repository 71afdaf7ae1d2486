"""The run schema: typed sections of a run file, resolved and validated into a :class:`RunSpec`.

A run names its parts (``dataset``, ``task``, ``backbone``, ``method``, ``engine``) and overrides their defaults; each
named section is validated by the ``Config`` class of the registry entry it names (``harness/registry.py``), the
others (``train``, ``tracking``) by the models here. Every problem is collected and reported at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from harness.api import check_segments, segment_spec
from harness.config.errors import TOP_KEYS, ConfigError, Errors, label_errors, shown, validate
from harness.registry import BACKBONES, DATASETS, ENGINES, FORMATS, METHODS, TASKS, Registry, UnknownNameError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LrGroup(_Strict):
    """A parameter group of ``train.lr_groups``: the trainable parameters whose names match, with their own peak lr."""

    match: str | list[str] = Field(
        description="glob pattern(s) over parameter names, which start with 'method.' (the fusion method) or 'task.' "
        "(the shared head), e.g. 'task.*' or 'method.adapters.*' (fnmatch; see `harness run` errors for the names)"
    )
    lr: float = Field(gt=0, description="peak learning rate of the group; warmup and cosine decay scale it as train.lr")
    weight_decay: float | None = Field(None, ge=0, description="weight decay of the group; null = train.weight_decay "
                                       "(biases and norms never decay)")  # fmt: skip

    def patterns(self) -> list[str]:
        return [self.match] if isinstance(self.match, str) else list(self.match)


class TrainConfig(_Strict):
    """Optimisation and loop settings shared by every method (AdamW or SGD + warmup + cosine decay)."""

    epochs: int = Field(10, ge=1, le=100_000, description="number of passes over the training split")
    batch_size: int = Field(32, ge=1, description="training clips per optimiser step (all workers together)")
    eval_batch_size: int = Field(128, ge=1, description="clips per forward pass when evaluating")
    lr: float = Field(1.0e-3, gt=0, description="peak learning rate, reached at the end of warmup")
    weight_decay: float = Field(0.05, ge=0, description="weight decay of matrices (biases and norms: none); adamw: "
                                "decoupled, sgd: L2 in the gradient")  # fmt: skip
    warmup_epochs: float = Field(1.0, ge=0, description="linear warmup length in epochs (0 = none)")
    min_lr: float = Field(0.0, ge=0, description="learning rate at the end of the cosine decay")
    grad_clip: float | None = Field(1.0, gt=0, description="max global gradient norm; null disables clipping")
    threads: int | None = Field(None, ge=1, description="torch intra-op threads per trial; null = torch default")
    frozen_cache: bool = Field(
        False,
        description="compute a frozen backbone's activations before its first trainable layer once per clip and reuse "
        "them across epochs and trials (cache_dir/activations; off with augmentation, dropout or drop path)",
    )
    mixup_alpha: float = Field(0.0, ge=0, description="mixup: each batch mixed with its reversal by w ~ Beta(α, α), "
                               "labels as soft targets (MBT: 0.5); 0 = no mixup (harness/run/augment.py)")  # fmt: skip
    modality_mixup: bool = Field(False, description="MBT's modality-mixup: an independent w per modality, each "
                                 "modality's logits trained on its own mixed label; needs mixup_alpha > 0")  # fmt: skip
    modality_dropout: float = Field(0.0, ge=0, le=1, description="probability that a training clip loses one "
                                    "modality (audio or video, 50/50; never both); 0 = off")  # fmt: skip
    # -- speed on the hardware (docs/performance.md) --
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto: bf16 autocast on a GPU that has bf16, fp32 elsewhere (CPU); bf16 / fp16: mixed "
        "precision (fp16 with a loss scaler); fp32 matmuls use TF32 on a GPU; both engines",
    )  # fmt: skip
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimiser step (batch_size / grad_accum clips "
                            "each, all workers together); batch_size must be a multiple")  # fmt: skip
    compile: bool = Field(False, description="torch.compile the method (torch engine); the first steps compile")
    compile_backend: str = Field("inductor", description="torch.compile backend: inductor; aot_eager or eager to "
                                 "find what breaks")  # fmt: skip
    activation_checkpointing: bool = Field(False, description="recompute every attention and MLP in the backward "
                                           "pass instead of keeping their activations (torch engine)")  # fmt: skip
    checkpoint_every: int = Field(1, ge=1, description="epochs between training-state checkpoints (written in the "
                                  "background); the last epoch's always")  # fmt: skip
    peak_tflops: float | None = Field(None, gt=0, description="the device's peak dense TFLOP/s at this precision, "
                                      "for perf/mfu; null = harness/run/perf.py's table (no MFU on a CPU)")  # fmt: skip

    optimizer: Literal["adamw", "sgd"] = Field("adamw", description="adamw: torch AdamW, decoupled weight decay; "
                                               "sgd: SGD with momentum (scenic's 'momentum', MBT's recipe), weight "
                                               "decay as L2 in the gradient")  # fmt: skip
    momentum: float = Field(0.9, ge=0, lt=1, description="sgd only: momentum (scenic's default 0.9; 0 = plain SGD)")
    nesterov: bool = Field(False, description="sgd only: Nesterov momentum (scenic's default: false)")
    lr_groups: list[LrGroup] = Field(
        default_factory=list,
        description="parameter groups with their own peak lr (LAVISH: adapters at lr, head at lr_mlp), matched by "
        "name; a parameter takes the first group that matches, the others train at train.lr",
    )
    loss_reduction: Literal["mean", "sum"] = Field(
        "mean",
        description="how a clip's per-class loss terms combine where the task's loss has one per class (multilabel's "
        "sigmoid BCE): mean (torch, AST) or sum (scenic/MBT, C times larger); the batch is always averaged",
    )

    @model_validator(mode="after")
    def _mixup_needs_alpha(self) -> TrainConfig:
        if self.modality_mixup and self.mixup_alpha <= 0:
            raise ValueError("modality_mixup=true needs mixup_alpha > 0 (it is mixup with one weight per modality)")
        return self

    @model_validator(mode="after")
    def _nesterov_needs_sgd(self) -> TrainConfig:
        # momentum is ignored by adamw (its default is always there: resolved specs round-trip every key)
        if self.nesterov and self.optimizer != "sgd":
            raise ValueError(f"nesterov=true applies to optimizer: sgd only (optimizer is {self.optimizer!r})")
        if self.nesterov and self.momentum == 0:
            raise ValueError("nesterov=true needs momentum > 0")
        return self

    @model_validator(mode="after")
    def _micro_batches_fit(self) -> TrainConfig:
        if self.batch_size % self.grad_accum:
            raise ValueError(f"batch_size={self.batch_size} must be a multiple of grad_accum={self.grad_accum} "
                             "(equal micro-batches)")  # fmt: skip
        if self.compile and self.frozen_cache:
            raise ValueError("compile=true with frozen_cache=true: the cache looks clips up in Python inside the "
                             "forward; turn one off")  # fmt: skip
        return self


class EngineConfig(_Strict):
    """Which training engine runs the trial; an engine with settings of its own subclasses this as its ``Config``."""

    name: str = Field("torch", description="registered engine (`harness ls engines`)")

    def check(self, train: TrainConfig) -> Errors:
        """Cross-checks against the ``train`` section; ``(key path, message)`` pairs, empty when consistent."""
        return []


class TrackingConfig(_Strict):
    """Where results are logged."""

    uri: str | None = Field(None, description="MLflow tracking URI; null = --tracking-uri, $MLFLOW_TRACKING_URI, local")
    experiment: str | None = Field(None, description="MLflow experiment; null = the run's or sweep's name")


class _TopLevel(_Strict):
    name: str = Field(description="run name (default: the file stem); for sweeps the MLflow experiment")
    seed: int = Field(0, ge=0, le=2**32 - 1, description="seed of data order, initialisation and augmentation")
    dataset: dict[str, Any] = Field(description="dataset card name + overrides of its format's parameters")
    task: dict[str, Any] = Field(default_factory=dict, description="task name + its Config fields")
    backbone: dict[str, Any] = Field(default_factory=lambda: {"name": "tiny"}, description="preset + overrides")
    method: dict[str, Any] = Field(description="fusion method name + its Config fields")
    train: TrainConfig = Field(default_factory=TrainConfig, description="optimisation settings")
    engine: dict[str, Any] = Field(default_factory=dict, description="engine name + its Config fields")
    tracking: TrackingConfig = Field(default_factory=TrackingConfig, description="MLflow settings")
    cache_dir: str | None = Field(None, description="generated/prepared data cache; null = $HARNESS_CACHE or ~/.cache")


@dataclass
class DatasetSpec:
    """A resolved dataset: card name, file format, the card itself and the validated format parameters."""

    name: str
    format: str
    card: dict
    params: BaseModel


@dataclass
class RunSpec:
    """One fully resolved and validated run. Build it with :func:`load_config` or :meth:`from_dict`."""

    name: str
    seed: int
    dataset: DatasetSpec
    task_name: str
    task: BaseModel
    backbone: BaseModel
    method: BaseModel
    train: TrainConfig
    engine: EngineConfig
    tracking: TrackingConfig
    cache_dir: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain nested JSON-able dict in the YAML spelling; :meth:`from_dict` rebuilds the same spec."""
        return {
            "name": self.name,
            "seed": self.seed,
            "dataset": {"name": self.dataset.name, **self.dataset.params.model_dump(mode="json")},
            "task": {"name": self.task_name, **self.task.model_dump(mode="json")},
            "backbone": self.backbone.model_dump(mode="json"),
            "method": self.method.model_dump(mode="json"),
            "train": self.train.model_dump(mode="json"),
            "engine": self.engine.model_dump(mode="json"),
            "tracking": self.tracking.model_dump(mode="json"),
            "cache_dir": self.cache_dir,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunSpec:
        """Validate a run dict (YAML spelling, e.g. from :meth:`to_dict`). Raises :class:`ConfigError`."""
        return resolve_run(d)


# --- resolution, one section at a time ------------------------------------------------------------------------------


def lookup(registry: Registry, section: str, name: Any, errors: Errors, attr: str | None = None) -> Any:
    """Resolve ``name`` in ``registry`` (and its ``attr``); record an error at ``section.name`` instead of raising."""
    key = f"{section}.name"
    if not isinstance(name, str):
        errors.append((key, f"must be the name of a registered {registry.kind}, got {shown(name)}"))
        return None
    try:
        obj = registry.get(name)
        return getattr(obj, attr) if attr else obj
    except UnknownNameError as e:
        errors.append((key, str(e)))
    except (ImportError, AttributeError, TypeError) as e:
        errors.append((key, f"{registry.kind} {name!r} cannot be loaded: {type(e).__name__}: {e}"))
    return None


def _named(model: type[BaseModel], name: str, fields: dict) -> dict:
    """Section fields as the model takes them: with ``name`` only if the model has such a field."""
    return {**fields, "name": name} if "name" in model.model_fields else fields


def _section(top: _TopLevel, key: str) -> dict:
    value = getattr(top, key, None)
    return value if isinstance(value, dict) else {}


def _dataset(top: _TopLevel, errors: Errors) -> tuple[DatasetSpec | None, dict | None, Any]:
    """The dataset section against its card and format: (spec, card, format loader class)."""
    ds = _section(top, "dataset")
    if "name" not in ds:
        return None, None, None
    card = lookup(DATASETS, "dataset", ds["name"], errors)
    if card is None:
        return None, None, None
    loader = lookup(FORMATS, "dataset", card["format"], errors)
    if loader is None:
        return None, card, None
    params = validate(
        loader.Config, {**card["params"], **{k: v for k, v in ds.items() if k != "name"}}, "dataset", errors
    )
    root = getattr(params, "root", None)  # real data: the annotations are read from it on every start
    if isinstance(root, str) and not Path(root).is_dir():
        errors.append(("dataset.root", f"{shown(root)} is not a folder; it must hold the dataset's annotation files "
                                       f"and media (datasets/README.md, or `harness synth --layout ...`)"))  # fmt: skip
    return (DatasetSpec(ds["name"], card["format"], card, params) if params is not None else None), card, loader


def _task(top: _TopLevel, card: dict | None, errors: Errors) -> tuple[str, BaseModel | None]:
    """The task section: the card's default task, overridden by the file's."""
    card_task = (card or {}).get("task", {})
    card_task = {"name": card_task} if isinstance(card_task, str) else card_task
    raw = {**card_task, **_section(top, "task")}
    name = raw.pop("name", "classification")
    # with an unknown card the default task is unknown too: don't pile a guessed task's errors on top
    if card is None and "name" not in _section(top, "task"):
        return name, None
    cls = lookup(TASKS, "task", name, errors, "Config")
    return name, (validate(cls, _named(cls, name, raw), "task", errors) if cls is not None else None)


def _backbone(top: _TopLevel, errors: Errors) -> BaseModel | None:
    """The backbone section: a preset's defaults, overridden by the file's keys."""
    from harness.models.backbones import BackboneConfig

    bb = dict(getattr(top, "backbone", None) or {"name": "tiny"})
    name = bb.pop("name", "tiny")
    preset = lookup(BACKBONES, "backbone", name, errors)
    return None if preset is None else validate(BackboneConfig, {**preset(), **bb, "name": name}, "backbone", errors)


def _method(top: _TopLevel, backbone: BaseModel | None, errors: Errors) -> BaseModel | None:
    """The method section, with its cross-checks against the backbone."""
    m = dict(_section(top, "method"))
    if "name" not in m:
        return None
    cls = lookup(METHODS, "method", m["name"], errors, "Config")
    method = None if cls is None else validate(cls, _named(cls, m.pop("name"), m), "method", errors)
    if method is not None and backbone is not None:
        for key, msg in method.check_family(backbone) or method.check(backbone):
            errors.append((key if key.split(".")[0] in TOP_KEYS else f"method.{key}", msg))
    return method


def _engine(top: _TopLevel, errors: Errors) -> EngineConfig | None:
    """The engine section, validated by the engine's own ``Config``, with its checks against ``train``."""
    eng = dict(_section(top, "engine"))
    name = eng.get("name", "torch")
    cls = lookup(ENGINES, "engine", name, errors)
    engine = None if cls is None else validate(cls.Config, {**eng, "name": name}, "engine", errors)
    train = getattr(top, "train", None)
    if engine is not None and isinstance(train, TrainConfig):
        errors += engine.check(train)
    return engine


def _loss_reduction_fits(train: TrainConfig, task_name: str) -> Errors:
    """``train.loss_reduction: sum`` only where the task's loss has one term per class (``Task.per_class_loss``)."""
    cls = TASKS.get(task_name)
    if train.loss_reduction == "sum" and not getattr(cls, "per_class_loss", False):
        why = "its loss has one term per clip or segment (softmax CE); it applies to per-class losses (multilabel)"
        return [("train.loss_reduction", f"'sum' has no effect with task {task_name!r}: {why}; use mean")]
    return []


def _method_feeds_task(task_name: str, method_name: str) -> Errors:
    """A task over token outputs (``Task.token_modalities``: ``segmentation`` decodes video tokens) needs a method
    that returns them (``FusionMethod.token_outputs``) for those modalities."""
    needs = getattr(TASKS.get(task_name), "token_modalities", ())
    if not needs:
        return []
    cls = METHODS.get(method_name)
    if not getattr(cls, "token_outputs", False):
        return [("method.name", f"{method_name!r} returns no token outputs; task {task_name!r} decodes the method's "
                                f"{' and '.join(needs)} tokens (FusionMethod.token_outputs)")]  # fmt: skip
    if missing := [m for m in needs if m not in cls.modalities]:
        msg = f"{method_name!r} consumes no {' or '.join(missing)}; task {task_name!r} decodes {' and '.join(needs)} "
        return [("method.name", msg + f"tokens; pick a method with {' and '.join(missing)}")]
    return []


def _resolve(d: dict) -> tuple[RunSpec | None, Errors]:
    errors: Errors = []
    top = validate(_TopLevel, d, "", errors)
    if top is None:  # go on with what parsed, so that the sections' own errors are reported too
        raw = {k: d.get(k) for k in ("dataset", "task", "backbone", "method", "engine")}
        parts = {k: v for k, v in raw.items() if isinstance(v, dict)}
        try:  # the engine checks itself against train, if that section is fine on its own
            parts["train"] = TrainConfig.model_validate(d.get("train") or {})
        except (ValueError, TypeError):
            pass
        top = _TopLevel.model_construct(**parts)
    for section in ("dataset", "method"):
        if isinstance(getattr(top, section, None), dict) and "name" not in getattr(top, section):
            errors.append((f"{section}.name", f"missing required key; see `harness ls {section}s`"))
    dataset, card, loader = _dataset(top, errors)
    task_name, task = _task(top, card, errors)
    backbone = _backbone(top, errors)
    if backbone is not None:  # against the input shapes when the format computes them without data
        shapes = loader.input_spec(dataset.params) if dataset is not None else None
        if shapes is not None and task is not None and (segments := task.method_segments()):  # one segment's shapes
            split_errors = check_segments(shapes, segments)
            errors += split_errors
            shapes = None if split_errors else segment_spec(shapes, segments)
        errors += backbone.check(shapes)
    method = _method(top, backbone, errors)
    train = getattr(top, "train", None)
    if isinstance(train, TrainConfig) and train.min_lr > train.lr:
        errors.append(("train.min_lr", f"must be <= train.lr = {train.lr} (got {train.min_lr})"))
    if isinstance(train, TrainConfig) and task is not None:
        errors += _loss_reduction_fits(train, task_name)
    if task is not None and method is not None:
        errors += _method_feeds_task(task_name, method.name)
    engine = _engine(top, errors)
    if errors:
        return None, errors
    spec = RunSpec(top.name, top.seed, dataset, task_name, task, backbone, method, top.train, engine,
                   top.tracking, top.cache_dir)  # fmt: skip
    return spec, []


def resolve_run(d: dict[str, Any], origins: dict[str, str] | None = None) -> RunSpec:
    """Validate one run dict (YAML spelling, includes already merged) into a :class:`RunSpec`.

    Args:
        d: the run's keys (``name``, ``seed``, ``dataset``, ``method``, ...).
        origins: dotted key -> how the user wrote it (``"--set method.fusion_layer=13"``), for messages.

    Raises:
        ConfigError: every problem found, at once.
    """
    spec, errors = _resolve(d)
    if errors:
        raise ConfigError(label_errors(errors, origins or {}))
    return spec
