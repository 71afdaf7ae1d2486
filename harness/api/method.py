"""The method contract: a typed config and an ``nn.Module`` whose ``forward(batch)`` returns embeddings.

Every registered method (built-in in ``methods/`` or a plug-in of the ``harness.methods`` entry-point group)
subclasses :class:`FusionMethod` and gives it a :class:`MethodConfig` subclass as ``Config``. The task owns the
head, the loss and the metrics, so every method is scored by the same head; trainable = ``requires_grad``. What the
core reads of a method is declared here and nowhere else:

- ``build(cfg, backbone, spec)``: the constructor the core calls (a method with several implementations, e.g.
  LAVISH on a ViT or a Swin-V2, picks one here);
- ``forward(batch) -> {"embedding": (B, D) or (B, S, D), "per_modality": {m: (B, D)} (optional)}``; a method
  need not localise itself: for a per-segment task it is built on one segment's spec and run on every segment of a
  clip (``harness.api.segments``), its (B·S, D) outputs read as (B, S, D);
- token-level outputs (``token_outputs = True``): ``forward`` also returns ``"tokens": {"video": (B, T, Nv, D),
  "audio": (B, Na, D)}`` (each consumed modality's patch tokens after the method's final norm, CLS and bottleneck
  tokens excluded, an absent modality's rows 0) and, for a hierarchical backbone, ``"stages": [{"video": (B, T,
  N_s, C_s), "audio": (B, Na_s, C_s)}, ...]`` finest first; :meth:`FusionMethod.token_layout` declares their shapes
  (:class:`TokenLayout`). Dense and reasoning tasks (``segmentation``, ``avqa``) read them; a method that cannot
  provide them keeps ``token_outputs = False`` (the default) and those tasks refuse it with a config error;
- ``embed_dim``: D of the embeddings;
- ``modalities``: which streams it consumes; ``frozen_prefix``: the frozen submodule whose output
  ``harness.run.frozen_cache`` may cache;
- ``load_backbone(state_dict)``: fill the backbone from a local image-ViT checkpoint (``backbone.checkpoint``);
- ``contract_variants``: option sets that ``harness.testing`` runs the contract tests on, besides the defaults.

Shapes: ``B`` batch, ``S`` segments, ``D`` width, ``T`` time steps of the video tokens, ``Nv = h·w`` video tokens
per time step (row-major over an h x w patch grid), ``Na`` audio tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from harness.api.inputs import InputSpec

if TYPE_CHECKING:  # annotations only: the core's types, never imported by the contract
    from harness.models.backbones import BackboneConfig
    from harness.models.weights import LoadReport


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or that does not fit the configured backbone."""


@dataclass(frozen=True)
class StageLayout:
    """One stage of a hierarchical backbone's outputs: ``video`` (T, h, w, C) and ``audio`` (Na, C) shapes."""

    video: tuple[int, int, int, int] | None = None
    audio: tuple[int, int] | None = None


@dataclass(frozen=True)
class TokenLayout:
    """The shapes of a method's ``tokens`` (and ``stages``) outputs for one clip; what a task builds its head on.

    Attributes:
        video: (T, h, w, D): T time steps of an h x w grid of D-wide tokens, returned as (B, T, h·w, D); None when
            the method consumes no video.
        audio: (Na, D), returned as (B, Na, D); None when it consumes no audio.
        audio_time: the time step (in ``range(audio_steps)``) each audio token covers, in token order, so a task can
            pool the audio per time step whatever the method's token order (frequency- or time-major).
        audio_steps: time steps of the audio tokens.
        stages: hierarchical backbones only: every stage's shapes, finest first (the last is the final tokens').
    """

    video: tuple[int, int, int, int] | None = None
    audio: tuple[int, int] | None = None
    audio_time: tuple[int, ...] = ()
    audio_steps: int = 0
    stages: tuple[StageLayout, ...] = ()

    def modalities(self) -> tuple[str, ...]:
        return tuple(m for m in ("audio", "video") if getattr(self, m) is not None)


def token_outputs(z: dict[str, Tensor], present: dict[str, Tensor], layout: TokenLayout, cls: bool = True
                  ) -> dict[str, Tensor]:  # fmt: skip
    """The ``tokens`` output from each modality's final sequence: CLS dropped, video on its grid, absent rows 0.

    Args:
        z: ``{m: (B, 1 + N_m, D)}`` after the method's final norm (``(B, N_m, D)`` when ``cls`` is False), video tokens
            time-major over the (T, h, w) grid of ``layout.video``.
        present: ``{m: (B,) bool}``.
        layout: the method's :class:`TokenLayout`.
        cls: whether each sequence starts with a CLS token.

    Returns:
        ``{"video": (B, T, h·w, D), "audio": (B, Na, D)}`` for the modalities of ``layout``.
    """
    out = {}
    for m in layout.modalities():
        x = z[m][:, 1:] if cls else z[m]  # (B, N_m, D)
        x = torch.where(present[m].view(-1, 1, 1), x, torch.zeros((), dtype=x.dtype, device=x.device))
        if m == "video":
            t, h, w, _ = layout.video
            x = x.unflatten(1, (t, h * w))  # (B, T, h·w, D)
        out[m] = x
    return out


class MethodConfig(BaseModel):
    """Base of every method's typed config; subclasses add fields, each with a description.

    ``name`` is the method's registry name: the registry line (or the plug-in's entry point) is the one place it is
    spelt, and the configuration fills it in from ``method.name``; a config built directly (tests) may leave it empty.
    """

    model_config = ConfigDict(extra="forbid")

    families: ClassVar[tuple[str, ...]] = ("vit",)  # backbone families the method is built for

    name: str = Field("", description="registry name of the method (filled in from method.name)")

    def check(self, backbone: BackboneConfig) -> list[tuple[str, str]]:
        """Cross-checks against the backbone; ``(key path, message)`` pairs, empty when consistent."""
        return []

    def check_family(self, backbone: BackboneConfig) -> list[tuple[str, str]]:
        """An error when the method has no implementation on ``backbone.family``."""
        if backbone.family in self.families:
            return []
        built = " or ".join(self.families)
        msg = f"method {self.name!r} is built on {built} backbones, not {backbone.family} ({backbone.name})"
        return [("backbone.family", msg + "; pick a ViT backbone (e.g. vit_b16)")]


class FusionMethod(nn.Module):
    """An audio-visual encoder whose ``forward(batch)`` returns ``{"embedding": (B, D), ...}``.

    Subclasses set ``Config`` and, when they consume one stream only, ``modalities``.

    Args:
        cfg: the method's config (an instance of ``Config``).
        backbone: width, depth and tokenisation of the streams (``harness.models.backbones.BackboneConfig``).
        spec: the dataset's input shapes.
    """

    Config: ClassVar[type[MethodConfig]] = MethodConfig
    modalities: ClassVar[tuple[str, ...]] = ("audio", "video")
    # The always-frozen submodule whose output is a fixed function of the clip (``harness.run.frozen_cache``).
    frozen_prefix: ClassVar[str | None] = None
    # Option sets the contract tests run on besides the defaults (``harness.testing``); ``{"backbone": "swinv2"}``
    # in a set builds the method on the contract's tiny Swin-V2 instead of its tiny ViT.
    contract_variants: ClassVar[tuple[dict[str, Any], ...]] = ()
    # Whether ``forward`` also returns ``tokens`` (and, hierarchical backbones, ``stages``) as :meth:`token_layout`
    # declares them. False: the method cannot, and the tasks that need tokens refuse it (a config error).
    token_outputs: ClassVar[bool] = False

    def __init__(self, cfg: MethodConfig, backbone: BackboneConfig, spec: InputSpec):
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone
        self.spec = spec
        self.embed_dim: int = backbone.embed_dim

    @classmethod
    def build(cls, cfg: MethodConfig, backbone: BackboneConfig, spec: InputSpec) -> FusionMethod:
        """The method for this configuration; the one constructor the core calls. Default: ``cls(...)``."""
        return cls(cfg, backbone, spec)

    def forward(self, batch: dict) -> dict[str, Tensor | dict[str, Tensor]]:
        """``{"embedding": (B, D) or (B, S, D)}``, optionally ``"per_modality": {m: (B, D)}``."""
        raise NotImplementedError(f"{type(self).__name__} does not define forward(batch)")

    def token_layout(self) -> TokenLayout:
        """The shapes of the ``tokens`` / ``stages`` outputs (``token_outputs = True``); checked against the outputs by
        the method contract (``harness.testing``).

        Raises:
            NotImplementedError: the method has no token outputs (``token_outputs = False``).
        """
        raise NotImplementedError(f"method {self.cfg.name!r} returns no token outputs (token_outputs = False)")

    def load_backbone(self, state_dict: dict[str, Tensor]) -> LoadReport:
        """Fill the backbone from an image ViT's state dict (timm layout); called after init when
        ``backbone.checkpoint`` is set.

        Raises:
            CheckpointError: the method has no mapping from an image ViT, or a tensor does not fit.
        """
        raise CheckpointError(
            f"method {self.cfg.name!r} has no backbone-checkpoint mapping; drop backbone.checkpoint or give "
            "the method a load_backbone (harness.models.blocks.ViTStreams has the standard one)"
        )
