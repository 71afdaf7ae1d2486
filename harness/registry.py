"""Name -> object registries for methods, tasks, datasets, backbones, engines and dataset formats.

Entries are lazy ``"module:attr"`` strings, resolved with importlib on the first :meth:`Registry.get` and cached, so
listing names (``harness ls``) never imports torch and a Ray worker resolves names in a fresh process. A registry with a
``base`` checks on resolve that the entry subclasses it (methods ``harness.api.FusionMethod``, tasks
``harness.api.Task``, engines ``harness.api.Engine``, formats ``harness.api.Dataset``). Third-party packages add entries
through entry points (group ``harness.methods``, ...; ``docs/plugins.md``); a plug-in may not reuse a built-in name, and
its description is the first line of its target's docstring, read from the source without importing it. Dataset names
come from the YAML cards in ``datasets/`` (see :class:`CardRegistry`).

All built-in entries are registered at the bottom of this file, one line each: that line is the only place a
built-in's name is spelt (its config's ``name`` is filled in from it).
"""

from __future__ import annotations

import ast
import difflib
import importlib
import importlib.metadata
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "BACKBONES",
    "DATASETS",
    "ENGINES",
    "FORMATS",
    "METHODS",
    "TASKS",
    "CardRegistry",
    "DuplicateNameError",
    "Registry",
    "UnknownNameError",
    "close_names",
    "resolve_target",
]


def close_names(name: str, valid: list[str] | tuple[str, ...], n: int = 3) -> list[str]:
    """Valid names close to a misspelt one (difflib), best first."""
    return difflib.get_close_matches(name, list(valid), n=n, cutoff=0.6)


class UnknownNameError(KeyError):
    """A name that is not in a registry.

    Attributes:
        kind: what was looked up ("method").
        name: the name asked for.
        suggestions: close valid names, best first.
        valid: every valid name, sorted.
    """

    def __init__(self, kind: str, name: str, valid: list[str]):
        self.kind, self.name, self.valid = kind, name, sorted(valid)
        self.suggestions = close_names(str(name), self.valid)
        super().__init__(str(self))

    def __str__(self) -> str:
        hint = f" (did you mean {' or '.join(repr(s) for s in self.suggestions)}?)" if self.suggestions else ""
        valid = ", ".join(self.valid) if self.valid else "(none registered)"
        return f"unknown {self.kind} {self.name!r}{hint}; valid {self.kind}s: {valid}"


class DuplicateNameError(ValueError):
    """A name registered twice, or a plug-in that would shadow a built-in entry."""


@dataclass
class _Entry:
    target: Any  # "module:attr", an importlib.metadata.EntryPoint, or the object itself
    description: str
    origin: str  # "built-in" or "plug-in from <distribution>"
    resolved: bool = False


def resolve_target(target: str) -> Any:
    """The object a ``"package.module:attr"`` string names (imported)."""
    module, sep, attr = target.partition(":")
    if not sep or not module or not attr:
        raise ValueError(f"registry target {target!r} must look like 'package.module:attr'")
    obj: Any = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def source_docstring(target: str) -> str:
    """The first line of the docstring of ``"module:attr"`` (or of the module), read from its source file without
    importing the module; "" when there is none or the source cannot be found."""
    module, _, attr = target.partition(":")
    try:
        spec = importlib.util.find_spec(module)
        tree = ast.parse(open(spec.origin, encoding="utf-8").read()) if spec and spec.origin else None
    except (ImportError, ValueError, OSError, SyntaxError):
        return ""
    if tree is None:
        return ""
    node: ast.AST = tree
    for name in attr.split(".") if attr else []:
        found = [n for n in getattr(node, "body", []) if getattr(n, "name", None) == name]
        if not found or not isinstance(found[0], (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            break
        node = found[0]
    doc = ast.get_docstring(node) if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)) else None
    return doc.strip().splitlines()[0].strip() if doc else ""


class Registry:
    """Lazy name -> object table of one kind, extended by the entry points of one group.

    Args:
        kind: singular noun used in messages ("method").
        group: entry-point group of third-party plug-ins ("harness.methods"), or None for none.
        base: ``"module:attr"`` of the class every entry must subclass (checked when it is resolved), or None.
    """

    def __init__(self, kind: str, group: str | None = None, base: str | None = None):
        self.kind = kind
        self.group = group
        self.base = base
        self._entries: dict[str, _Entry] = {}
        self._plugins_loaded = group is None

    def register(self, name: str, target: str | object, description: str = "") -> None:
        """Add a built-in entry.

        Args:
            name: the name users write in YAML (``method.name: mbt``).
            target: ``"module:attr"`` (imported on first :meth:`get`) or the object itself.
            description: one line shown by ``harness ls`` without importing the target.

        Raises:
            DuplicateNameError: the name is taken.
        """
        if name in self._entries:
            raise DuplicateNameError(f"{self.kind} {name!r} is registered twice ({self._entries[name].origin})")
        self._entries[name] = _Entry(target, description, "built-in", resolved=not isinstance(target, str))

    def refresh(self) -> None:
        """Forget the discovered plug-ins and scan the entry points again (after installing a package)."""
        self._entries = {k: e for k, e in self._entries.items() if e.origin == "built-in"}
        self._plugins_loaded = self.group is None

    def _load_plugins(self) -> None:
        if self._plugins_loaded:
            return
        self._plugins_loaded = True
        for ep in importlib.metadata.entry_points(group=self.group):
            dist = getattr(getattr(ep, "dist", None), "name", None) or "an unknown distribution"
            origin = f"plug-in from {dist}"
            if ep.name in self._entries:
                other = self._entries[ep.name]
                if other.origin == origin:
                    continue  # the same distribution found twice on sys.path
                raise DuplicateNameError(
                    f"{self.kind} {ep.name!r} of entry-point group {self.group!r} ({origin}, {ep.value}) "
                    f"clashes with the {other.origin} entry of that name; rename the plug-in"
                )
            summary = source_docstring(ep.value)
            self._entries[ep.name] = _Entry(ep, f"{summary} ({origin})" if summary else f"({origin})", origin)

    def names(self) -> list[str]:
        """Every registered name, built-in and plug-in, sorted."""
        self._load_plugins()
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        self._load_plugins()
        return name in self._entries

    def _entry(self, name: str) -> _Entry:
        self._load_plugins()
        if name not in self._entries:
            raise UnknownNameError(self.kind, name, self.names())
        return self._entries[name]

    def get(self, name: str) -> Any:
        """The object registered as ``name``, imported on first use and cached.

        Raises:
            UnknownNameError: no such name; the error suggests close names and lists the valid ones.
        """
        entry = self._entry(name)
        if not entry.resolved:
            target = entry.target
            obj = resolve_target(target) if isinstance(target, str) else target.load()  # str or any EntryPoint
            if self.base is not None and not (isinstance(obj, type) and issubclass(obj, resolve_target(self.base))):
                where = target if isinstance(target, str) else target.value
                raise TypeError(f"{self.kind} {name!r} ({entry.origin}, {where}) must be a subclass of "
                                f"{self.base.replace(':', '.')}; see docs/plugins.md")  # fmt: skip
            entry.target, entry.resolved = obj, True
        return entry.target

    def describe(self, name: str) -> str:
        """The one-line description of ``name`` (never imports the target)."""
        return self._entry(name).description

    def origin(self, name: str) -> str:
        """``"built-in"`` or ``"plug-in from <distribution>"``."""
        return self._entry(name).origin

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, group={self.group!r})"


def datasets_dir() -> Path:
    """Folder of the dataset cards: ``$HARNESS_DATASETS_DIR`` or ``datasets/`` in the repository root."""
    env = os.environ.get("HARNESS_DATASETS_DIR")
    if env:
        return Path(env)
    import harness

    return Path(harness.__file__).resolve().parent.parent / "datasets"


class CardRegistry(Registry):
    """Datasets: one YAML card per dataset in :func:`datasets_dir`, plus plug-ins.

    ``get(name)`` returns the card as a dict (``name``, ``format``, ``description``, ``params``, ...) with
    ``path`` added. A plug-in entry point resolves to a card dict or to the path of a card file.
    The folder is rescanned whenever it (or ``$HARNESS_DATASETS_DIR``) changes.
    """

    _REQUIRED = ("name", "format", "description", "params")

    def __init__(self, kind: str, group: str | None = None):
        super().__init__(kind, group)
        self._scanned: tuple[Path, tuple[tuple[str, float], ...]] | None = None

    def _scan(self) -> None:
        folder = datasets_dir()
        files = sorted(folder.glob("*.yaml")) if folder.is_dir() else []
        key = (folder, tuple((str(f), f.stat().st_mtime) for f in files))
        if key == self._scanned:
            return
        self._scanned = key
        self._entries = {k: e for k, e in self._entries.items() if e.origin != "card"}
        for f in files:
            card = _read_card(f)
            name = card["name"]
            if name in self._entries:
                other = self._entries[name]
                where = other.target.get("path") if other.origin == "card" else other.origin
                raise DuplicateNameError(f"dataset {name!r} of card {f} is also defined by {where}")
            self._entries[name] = _Entry(card, str(card.get("description", "")).strip().split("\n")[0], "card", True)

    def _load_plugins(self) -> None:
        self._scan()
        super()._load_plugins()

    def refresh(self) -> None:
        self._scanned = None
        super().refresh()

    def get(self, name: str) -> dict:
        obj = super().get(name)
        if isinstance(obj, (str, os.PathLike)):
            obj = _read_card(Path(obj))
            self._entries[name].target = obj
        if not isinstance(obj, dict):
            raise TypeError(f"dataset plug-in {name!r} must resolve to a card dict or a card path, got {type(obj)}")
        return dict(obj)


def _read_card(path: Path) -> dict:
    import yaml

    card = yaml.safe_load(path.read_text())
    if not isinstance(card, dict):
        raise ValueError(f"dataset card {path} must be a mapping, got {type(card).__name__}")
    missing = [k for k in CardRegistry._REQUIRED if k not in card]
    if missing:
        raise ValueError(f"dataset card {path} lacks required keys: {', '.join(missing)}")
    if not isinstance(card["params"], dict):
        raise ValueError(f"dataset card {path}: 'params' must be a mapping, got {card['params']!r}")
    return {**card, "path": str(path)}


METHODS = Registry("method", "harness.methods", base="harness.api:FusionMethod")
TASKS = Registry("task", "harness.tasks", base="harness.api:Task")
DATASETS = CardRegistry("dataset", "harness.datasets")
BACKBONES = Registry("backbone", "harness.backbones")
ENGINES = Registry("engine", "harness.engines", base="harness.api:Engine")
FORMATS = Registry("format", "harness.formats", base="harness.api:Dataset")

# fmt: off
METHODS.register("vanilla", "methods.vanilla:Vanilla", "vanilla self-attention fusion (MBT): one shared ViT, modalities concatenated from fusion_layer on")  # noqa: E501
METHODS.register("mbt", "methods.mbt:MBT", "Attention Bottlenecks (Nagrani et al. 2021): cross-modal flow only through bottleneck tokens")  # noqa: E501
METHODS.register("cross", "methods.cross:Cross", "modality-specific-parameter fusion (MBT): per-modality ViTs that attend over both modalities from fusion_layer on")  # noqa: E501
METHODS.register("late", "methods.late:Late", "late (score-level) fusion: two independent ViT streams, per-modality scores averaged")  # noqa: E501
METHODS.register("concat", "methods.concat:Concat", "feature-level late fusion (MultiBench LF): two ViT streams' CLS embeddings concatenated for the head")  # noqa: E501
METHODS.register("lavish", "methods.lavish:LAVISH", "LAVISH (Lin et al. 2023): frozen shared ViT + latent-token audio-visual adapters in every block")  # noqa: E501
METHODS.register("avish", "methods.avish:AVISH", "AVISH: LAVISH without latent tokens (direct audio-visual attention in each adapter)")  # noqa: E501
METHODS.register("lowrank", "methods.lowrank:LowRank", "shared low-rank multimodal transformer (AVBERT, Lee et al. 2021): U shared, V_k and orthogonal Q_k per modality")  # noqa: E501
METHODS.register("adapter", "methods.adapter:Adapter", "bottleneck adapters at LAVISH's positions on its frozen shared ViT, no cross-modal attention")  # noqa: E501
METHODS.register("lora", "methods.lora:LoRA", "LoRA (peft) on the attention qkv/proj of LAVISH's frozen shared ViT")
METHODS.register("prompt", "methods.prompt:Prompt", "VPT-deep: learnable prompt tokens per layer and modality on LAVISH's frozen shared ViT")  # noqa: E501
METHODS.register("frozen", "methods.frozen:Frozen", "linear probe of LAVISH's frozen shared ViT (head + optional LayerNorms)")  # noqa: E501
METHODS.register("audio_only", "methods.unimodal:AudioOnly", "audio stream only (unimodal baseline)")
METHODS.register("video_only", "methods.unimodal:VideoOnly", "video stream only (unimodal baseline)")
TASKS.register("classification", "harness.tasks.classification:ClassificationTask", "single-label classification: shared linear head, cross-entropy, top-1/top-5")  # noqa: E501
TASKS.register("multilabel", "harness.tasks.multilabel:MultilabelTask", "multi-label classification (AudioSet): shared linear head, sigmoid BCE, mAP/AUC")  # noqa: E501
TASKS.register("localization", "harness.tasks.localization:LocalizationTask", "per-segment event labels (AVE): shared head per segment, CE, segment accuracy")  # noqa: E501
TASKS.register("av_pretrain", "harness.tasks.av_pretrain:AVPretrainTask", "self-supervised AVBERT pretraining: masked embedding prediction + correct pair prediction, random or CANS negatives; no labels")  # noqa: E501
TASKS.register("segmentation", "harness.tasks.segmentation:SegmentationTask", "sounding-object masks per frame (AVSBench S4/MS3): FPN mask decoder over the video tokens, BCE, mIoU/F-score")  # noqa: E501
TASKS.register("avqa", "harness.tasks.avqa:AVQATask", "audio-visual question answering (MUSIC-AVQA): LSTM question encoder, AV grounding over the tokens, answer head, accuracy per question type")  # noqa: E501
TASKS.register("multihead", "harness.tasks.multihead:MultiheadTask", "verb + noun heads (EPIC-KITCHENS-100): mean CE, per-head and action (joint) top-1/top-5")  # noqa: E501
BACKBONES.register("tiny", "harness.models.backbones:tiny", "tiny ViT for CPU tests and the synthetic dataset")
BACKBONES.register("vit_ti16", "harness.models.backbones:vit_ti16", "ViT-Ti/16 (D=192, L=12, 3 heads)")
BACKBONES.register("vit_s16", "harness.models.backbones:vit_s16", "ViT-S/16 (D=384, L=12, 6 heads)")
BACKBONES.register("vit_b16", "harness.models.backbones:vit_b16", "ViT-B/16 (D=768, L=12, 12 heads)")
BACKBONES.register("vit_l16", "harness.models.backbones:vit_l16", "ViT-L/16 (D=1024, L=24, 16 heads)")
BACKBONES.register("swinv2_b", "harness.models.backbones:swinv2_b", "Swin-V2-B, window 12 (C=128, stages 2/2/18/2); lavish, avish")  # noqa: E501
BACKBONES.register("swinv2_l", "harness.models.backbones:swinv2_l", "Swin-V2-L, window 12 (C=192, stages 2/2/18/2); lavish, avish")  # noqa: E501
BACKBONES.register("cnn_tiny", "harness.models.backbones:cnn_tiny", "AVBERT layout for CPU: tiny 3-D / 2-D ResNets per short clip, D=64, L=4")  # noqa: E501
BACKBONES.register("cnn_r2plus1d18", "harness.models.backbones:cnn_r2plus1d18", "R(2+1)D-18 + ResNet-18 per short clip, D=768, L=12")  # noqa: E501
BACKBONES.register("swinv2_micro", "harness.models.backbones:swinv2_micro", "2-stage C=32 Swin-V2 for CPU tests; lavish, avish")  # noqa: E501
ENGINES.register("torch", "harness.run.engines.torch_engine:TorchEngine", "plain PyTorch train/eval loop (CPU or one GPU)")  # noqa: E501
ENGINES.register("deepspeed", "harness.run.engines.deepspeed_engine:DeepSpeedEngine", "DeepSpeed (ZeRO 0-3, bf16/fp16) on engine.workers Ray Train ranks; gloo on CPU, nccl on GPU")  # noqa: E501
ENGINES.register("auto", "harness.run.engines.auto:AutoEngine", "deepspeed where CUDA is available, torch otherwise")
FORMATS.register("synthetic", "harness.data.synthetic:SyntheticDataset", "procedural audio-visual clips generated on the fly and cached")  # noqa: E501
FORMATS.register("synthetic_avs", "harness.data.synthetic_avs:SyntheticAVSDataset", "the synthetic clips labelled with the sounding object's mask per frame (segmentation)")  # noqa: E501
FORMATS.register("avsbench", "harness.data.avsbench:AVSBenchDataset", "AVSBench S4/MS3: meta-data CSV + PNG frames, wavs and per-frame masks; segmentation")  # noqa: E501
FORMATS.register("synthetic_avqa", "harness.data.music_avqa:SyntheticAVQADataset", "the synthetic clips with one MUSIC-AVQA-style templated question each (avqa)")  # noqa: E501
FORMATS.register("vggsound_csv", "harness.data.formats:VGGSoundDataset", "VGGSound: vggsound.csv (ytid,start,label,split) + stat.csv classes; single label")  # noqa: E501
FORMATS.register("audioset_csv", "harness.data.formats:AudioSetDataset", "AudioSet segment CSVs (quoted MID lists) + class_labels_indices.csv; multi-hot")  # noqa: E501
FORMATS.register("ave", "harness.data.formats:AVEDataset", "AVE Annotations.txt + {train,val,test}_order.h5; per-second labels with background")  # noqa: E501
FORMATS.register("class_folders", "harness.data.formats:ClassFoldersDataset", "<split>/<class>/<clip>.mp4 folders (Kinetics-Sounds); single label")  # noqa: E501
FORMATS.register("epic_csv", "harness.data.formats:EpicDataset", "EPIC-KITCHENS-100 action-segment CSVs; verb + noun labels")  # noqa: E501
# fmt: on
