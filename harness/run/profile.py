"""``harness profile``: parameters, forward FLOPs and tokens of a method + task head at any size, without memory.

The method and the task are built on the meta device (``torch.device("meta")``): parameters have shapes but no
storage and no values, so a ViT-L pair costs no memory and no init time, and ``FlopCounterMode`` counts one clip's
forward pass from the shapes alone (the same counts as on CPU: ``tests/run/test_profile.py``).

A source is a run YAML (``harness.config.load_config``; the input shapes come from its dataset's format without
loading or generating any data) or a preset from ``harness/run/profiles/``. A file with an ``input:`` section
(``frames``, ``image_size``, ``n_mels``, ``n_frames``, ``num_classes``) gives the shapes directly and needs no
``dataset``; the presets are such files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from harness.api import InputSpec
from harness.config import ConfigError, RunSpec, apply_overrides, load_config, load_yaml, parse_override
from harness.config.errors import label_errors, unknown_key_msg, validate
from harness.config.run import lookup
from harness.models.backbones import BackboneConfig, num_audio_tokens, num_video_tokens
from harness.registry import BACKBONES, FORMATS, METHODS, TASKS, UnknownNameError

PROFILES_DIR = Path(__file__).resolve().parent / "profiles"
# Keys of a file with ``input:``; anything else (train, engine, ...) does not change the model and is ignored.
# ``paper_extras`` (presets): the paper's own parameter accounting (PaperExtras).
INPUT_FILE_KEYS = (
    "name", "seed", "input", "backbone", "method", "task", "train", "engine", "tracking", "cache_dir", "paper_extras"
)  # fmt: skip


class InputConfig(BaseModel):
    """The ``input:`` section: the shapes a dataset would yield (``harness.data.base.InputSpec``)."""

    model_config = ConfigDict(extra="forbid")

    frames: int = Field(gt=0, description="T, video frames per clip")
    image_size: int = Field(gt=0, description="H = W of each frame")
    n_mels: int = Field(gt=0, description="spectrogram height (frequency bins)")
    n_frames: int = Field(gt=0, description="spectrogram width (time frames)")
    num_classes: int = Field(gt=0, description="classes of the task head")
    clips: int = Field(1, gt=0, description="K short clips per sample (backbone.family: cnn; dataset.clips_per_sample)")


class PaperPart(BaseModel):
    """One part the paper's model counts and the harness's model does not have: a Linear layer, or bare parameters."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="what it is, e.g. imagenet21k_head, ave_fc1")
    in_features: int | None = Field(None, gt=0, description="a Linear layer's input width (with out_features)")
    out_features: int | None = Field(None, gt=0, description="a Linear layer's output width")
    bias: bool = Field(True, description="whether that Linear has a bias")
    params: int | None = Field(None, gt=0, description="a count of bare parameters instead of a Linear")
    trainable: bool = Field(description="whether the paper trains it (adds to trainable and to total)")
    why: str = Field("", description="where the paper's code has it (shown in the printout)")

    @model_validator(mode="after")
    def _one_form(self) -> PaperPart:
        linear = (self.in_features is not None, self.out_features is not None)
        if linear not in ((True, True), (False, False)) or all(linear) == (self.params is not None):
            raise ValueError(f"{self.name}: give in_features and out_features (a Linear), or params, not both")
        return self

    def module(self) -> torch.nn.Module:
        """The part as a module on the current device (meta in ``profile``): a Linear, or one flat parameter."""
        if self.params is not None:
            part = torch.nn.ParameterList([torch.nn.Parameter(torch.empty(self.params))])
        else:
            part = torch.nn.Linear(self.in_features, self.out_features, bias=self.bias)
        return part.requires_grad_(self.trainable)


class PaperExtras(BaseModel):
    """``paper_extras:`` of a preset: the paper counts its model; ours differs by these parts (docs/methods.md)."""

    model_config = ConfigDict(extra="forbid")

    source: str = Field(description="what the paper counts and where that comes from")
    drop_task_head: bool = Field(
        True, description="the paper's model has no harness task head, so the paper's figures leave ours out"
    )
    parts: list[PaperPart] = Field(description="the paper's parts the harness's model does not have")


@dataclass
class ProfileSpec:
    """What ``harness profile`` builds: the model's sections of a run and its input shapes."""

    name: str
    backbone: BackboneConfig
    method: BaseModel
    task_name: str
    task: BaseModel
    input: InputSpec
    paper_extras: PaperExtras | None = None


def presets() -> list[str]:
    """Names of the shipped presets (``harness/run/profiles/*.yaml``)."""
    return sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))


def preset_path(name: str) -> Path:
    """The file of preset ``name``. Raises :class:`ConfigError` naming close and valid presets."""
    if name not in presets():
        raise ConfigError([("--preset", str(UnknownNameError("preset", name, presets())))])
    return PROFILES_DIR / f"{name}.yaml"


def load_profile(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> ProfileSpec:
    """Resolve a run file or a file with ``input:`` (plus ``--set`` overrides) into a :class:`ProfileSpec`.

    Raises:
        ConfigError: every problem found, at once.
    """
    raw = load_yaml(path)
    if "input" not in raw:
        spec = load_config(path, overrides)
        if not isinstance(spec, RunSpec):
            raise ConfigError([(str(path), "is a sweep file; profile one run file (or a preset)")])
        shapes = FORMATS.get(spec.dataset.format).input_spec(spec.dataset.params)  # computed, no data read
        return ProfileSpec(spec.name, spec.backbone, spec.method, spec.task_name, spec.task, shapes)

    errors: list[tuple[str, str]] = []
    origins: dict[str, str] = {}
    errors += apply_overrides(raw, _input_file_overrides(overrides, errors), origins)
    errors += [(k, unknown_key_msg(k, list(INPUT_FILE_KEYS))) for k in raw if k not in INPUT_FILE_KEYS]
    shapes = _section(InputConfig, raw.get("input"), "input", errors)
    backbone, method, task_name, task = _model_sections(raw, errors)
    extras = None
    if raw.get("paper_extras") is not None:
        extras = _section(PaperExtras, raw["paper_extras"], "paper_extras", errors)
    if shapes is not None:
        shapes = InputSpec(**shapes.model_dump())
        if backbone is not None:
            errors += backbone.check(shapes)
    if method is not None and backbone is not None:
        errors += method.check_family(backbone) or method.check(backbone)
    if errors:
        raise ConfigError(label_errors(errors, origins))
    return ProfileSpec(raw.get("name", Path(path).stem), backbone, method, task_name, task, shapes, extras)


def _input_file_overrides(overrides: list[str] | tuple[str, ...], errors: list) -> list[tuple[str, Any, str]]:
    """The parsed ``--set`` of a file with ``input:``; an unparsable one or another top-level key is an error."""
    parsed = []
    for text in overrides:
        try:
            key, value = parse_override(text)
        except ConfigError as e:
            errors += e.errors
            continue
        if key.split(".")[0] not in INPUT_FILE_KEYS:
            errors.append((f"--set {text}", unknown_key_msg(key.split(".")[0], list(INPUT_FILE_KEYS))))
        else:
            parsed.append((key, value, f"--set {text}"))
    return parsed


def _model_sections(raw: dict, errors: list) -> tuple[BaseModel | None, BaseModel | None, str, BaseModel | None]:
    """(backbone, method, task name, task) of a file with ``input:``, each validated by its registry entry."""
    backbone = method = task = None
    bb = dict(raw.get("backbone") or {"name": "tiny"})
    preset = lookup(BACKBONES, "backbone", bb.get("name", "tiny"), errors)
    if preset is not None:
        backbone = _section(BackboneConfig, {**preset(), **bb}, "backbone", errors)
    m = dict(raw.get("method") or {})
    method_cls = lookup(METHODS, "method", m.get("name"), errors)
    if method_cls is not None:
        method = _section(method_cls.Config, m, "method", errors)
    t = dict(raw.get("task") or {})
    task_name = t.pop("name", "classification")
    task_cls = lookup(TASKS, "task", task_name, errors)
    if task_cls is not None:
        task = _section(task_cls.Config, t, "task", errors)
    return backbone, method, task_name, task


def _section(model: type[BaseModel], data: Any, prefix: str, errors: list) -> BaseModel | None:
    if not isinstance(data, dict):
        errors.append((prefix, f"must be a mapping, got {data!r}"))
        return None
    return validate(model, data, prefix, errors)


def profile(spec: ProfileSpec) -> dict[str, Any]:
    """Params, forward FLOPs/MACs of one clip and tokens per modality of the method + task head, built on meta.

    Returns:
        ``params_total``, ``params_trainable``, ``params_parts`` (params of each top-level submodule of the method,
        and of the task head; parameters the method holds directly are in no part), ``gflops`` (2 x ``gmacs``),
        ``gmacs``, ``tokens`` (patch tokens per modality, CLS excluded), and ``name``, ``method``, ``backbone``,
        ``task``, ``input`` for the record.
    """
    from harness.models.complexity import count_params, forward_flops

    with torch.device("meta"):
        method = METHODS.get(spec.method.name).build(spec.method, spec.backbone, spec.input)
        task = TASKS.get(spec.task_name)(spec.task, spec.input.num_classes, method.embed_dim)
        task.bind(method)
    total, trainable = count_params(torch.nn.ModuleDict({"method": method, "task": task}))
    count = {"video": num_video_tokens, "audio": num_audio_tokens}
    return {
        "name": spec.name,
        "method": spec.method.model_dump(mode="json"),
        "backbone": spec.backbone.name,
        "task": spec.task_name,
        "input": spec.input.to_dict(),
        "tokens": {m: count[m](spec.backbone, spec.input) for m in method.modalities} | _tokeniser_counts(method),
        "params_total": total,
        "params_trainable": trainable,
        # Per top-level part, for comparisons with papers that count one part (AVBERT: the transformers).
        "params_parts": {
            **{f"method.{n}": count_params(c)[0] for n, c in method.named_children()},
            "task": count_params(task)[0],
        },
        # AVBERT counts the CNNs and the Transformers apart: the cnn front ends (harness/models/cnn.py), by modality
        "params_front_ends": front_end_counts(method),
        **forward_flops(method, task, spec.input),
        **({"paper": paper_accounting(spec.paper_extras, method, task)} if spec.paper_extras else {}),
    }


def front_end_counts(method: torch.nn.Module) -> dict[str, int]:
    """Parameters of each per-clip CNN front end (``backbone.family: cnn``) by modality; empty for patch tokenisers."""
    from harness.models.cnn import parts

    return {name.rsplit(".", 1)[-1]: n for name, n in parts(method).items()}


def _tokeniser_counts(method: torch.nn.Module) -> dict[str, int]:
    """Token counts a tokeniser fixes itself: LAVISH's image-mode audio is cut by the video patch, not audio_patch."""
    audio = getattr(getattr(method, "tokens", None), "audio_tokens", None)
    return {} if audio is None else {"audio": audio}


def paper_accounting(extras: PaperExtras, method: torch.nn.Module, task: torch.nn.Module) -> dict[str, Any]:
    """The paper's parameter counts: our method (+ our task head unless dropped) + the paper's extra parts.

    The parts are built as modules (on meta under ``profile``) and counted like ours, never typed-in totals.
    """
    from harness.models.complexity import count_params

    with torch.device("meta"):
        parts = {p.name: p.module() for p in extras.parts}
    ours = [method] if extras.drop_task_head else [method, task]
    total, trainable = count_params(torch.nn.ModuleList([*ours, *parts.values()]))
    return {
        "source": extras.source,
        "task_head_dropped": extras.drop_task_head,
        "parts": {name: count_params(m)[0] for name, m in parts.items()},
        "parts_trainable": [p.name for p in extras.parts if p.trainable],
        "params_total": total,
        "params_trainable": trainable,
    }


def format_profile(p: dict[str, Any]) -> str:
    """The human-readable lines ``harness profile`` prints."""
    i = p["input"]
    method = ", ".join(f"{k}={v}" for k, v in p["method"].items())
    return "\n".join(
        [
            f"profile    {p['name']}",
            f"method     {method}",
            f"backbone   {p['backbone']}; task {p['task']} ({i['num_classes']} classes)",
            f"input      video {i['frames']}x3x{i['image_size']}x{i['image_size']}, audio 1x{i['n_mels']}x"
            f"{i['n_frames']}",
            "tokens     " + ", ".join(f"{m} {n}" for m, n in p["tokens"].items()) + " (CLS excluded)",
            f"params     total {p['params_total']:,} ({p['params_total'] / 1e6:.1f} M), trainable "
            f"{p['params_trainable']:,} ({p['params_trainable'] / 1e6:.1f} M)",
            "parts      " + ", ".join(f"{k} {v:,}" for k, v in p["params_parts"].items() if v),
            *_front_end_lines(p),
            f"forward    {_g(p['gflops'])} GFLOPs = 2 x {_g(p['gmacs'])} GMACs (one clip, batch 1)",
            *_paper_lines(p.get("paper")),
        ]
    )


def _front_end_lines(p: dict[str, Any]) -> list[str]:
    """The CNN front ends apart from the transformers (AVBERT's accounting); nothing for patch tokenisers."""
    cnn = p.get("params_front_ends") or {}
    if not cnn:
        return []
    shown = ", ".join(f"{m} {n:,} ({n / 1e6:.1f} M)" for m, n in cnn.items())
    rest = p["params_total"] - sum(cnn.values()) - p["params_parts"].get("task", 0)
    return [f"cnn        {shown}; the method without them {rest:,} ({rest / 1e6:.1f} M)"]


def _paper_lines(paper: dict[str, Any] | None) -> list[str]:
    """The paper's accounting, on lines of their own: what is ours and what is the paper's is never mixed."""
    if not paper:
        return []
    parts = ", ".join(
        f"{n} {c:,} ({'trainable' if n in paper['parts_trainable'] else 'frozen'})" for n, c in paper["parts"].items()
    )
    base = "method without our task head" if paper["task_head_dropped"] else "method + our task head"
    return [
        f"paper      total {paper['params_total']:,} ({paper['params_total'] / 1e6:.1f} M), trainable "
        f"{paper['params_trainable']:,} ({paper['params_trainable'] / 1e6:.1f} M) = {base} + {parts}",
        f"           ({paper['source']})",
    ]


def _g(x: float) -> str:
    return f"{x:.1f}" if x >= 10 else f"{x:.3g}"


def profile_command(file: str | None, preset: str | None, overrides: list[str], as_json: bool) -> int:
    """``harness profile``: print the cost of ``file`` or ``preset``; exit 2 on configuration errors."""
    if (file is None) == (preset is None):
        raise ConfigError([("profile", f"give a run FILE or --preset NAME (presets: {', '.join(presets())})")])
    p = profile(load_profile(preset_path(preset) if preset else file, overrides))
    print(json.dumps(p, sort_keys=True) if as_json else format_profile(p))
    return 0
