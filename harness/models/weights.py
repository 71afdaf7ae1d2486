"""Backbone weights from a local file: read an image-ViT checkpoint and map it onto the methods' modules.

Reading (``read_checkpoint``; nothing is ever downloaded): ``.safetensors``; ``.pth`` / ``.pt`` / ``.bin`` through
``torch.load(weights_only=True)`` with a ``model`` / ``state_dict`` wrapper unwrapped; ``.npz`` (original ViT /
big_vision JAX layout) through timm's own ``_load_weights`` into a timm ``VisionTransformer`` built on CPU at the
file's size, whose ``state_dict`` is then used. Every format ends as a timm ViT state dict.

Mapping (``image_vit`` then the ``*_kernel`` / ``*_pos`` builders) follows MBT's initialisation from an image ViT
(scenic ``mbt/model_utils.py``, ``init_embedding`` / ``init_posemb`` / ``init_encoderblock``):
- blocks: block l of the checkpoint into block l of every stream (both streams, or the one shared stack);
- tubelet kernel (D, 3, t, p, p): ``backbone.tubelet_init`` = ``central`` (the 2-D kernel in temporal slice t // 2,
  zeros elsewhere: a static clip's tubelet embedding equals the image embedding), ``average`` (filter inflation:
  the kernel / t in every slice), or ``average_arp`` (approximate-rank-pooling weights of Bilen et al., PAMI 2017,
  Eq. 3, divided by t), scenic's three ``kernel_init_method`` s;
- video positional table: the image's (gh, gw) grid resized bilinearly to the video's (h, w) and tiled over the t
  time steps (scenic ``positional_embed_size_change='resize_tile'``);
- spectrogram tokeniser: scenic feeds the (time, freq) spectrogram as 3 identical channels through the unchanged
  RGB kernel. Ours is (1, freq, time), so the kernel is summed over its 3 input channels (the same conv on a
  repeated input) and transposed (the image's row axis meets time, as in scenic); the grid is resized to
  (time, freq) as scenic does, then transposed to our frequency-major token order. A clip's audio stream then
  computes exactly what scenic's does on the transposed spectrogram;
- bilinear resizing uses ``align_corners=True``, which is what ``scipy.ndimage.zoom(order=1)`` (scenic) computes;
- CLS: our tables hold no CLS row, so the checkpoint's CLS position is folded into the CLS token (cls + pos[0]),
  which gives the CLS exactly timm's input;
- bottlenecks (MBT ``bottleneck_init: pos``): the grid resized to (int(sqrt(Nb)), Nb // that), as scenic.
Anything the checkpoint does not have (bottlenecks by default, adapters, the shared time table) keeps its init and
is reported as missing; checkpoint keys outside the backbone (the head, ``fc_norm``, ...) are reported as unexpected.
A backbone key whose shape cannot be resized raises :class:`CheckpointError` naming both keys and both shapes.

Shapes: ``D`` width, ``p`` patch, ``t`` tubelet, ``(gh, gw)`` the checkpoint's grid, ``Nb`` bottlenecks.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness.api import CheckpointError
from harness.models.backbones import CHECKPOINT_SUFFIXES, audio_grid, video_grid

log = logging.getLogger(__name__)

TORCH_SUFFIXES = tuple(s for s in CHECKPOINT_SUFFIXES if s in (".pth", ".pt", ".bin"))
WRAPPERS = ("model", "state_dict")  # timm train checkpoints, DeiT / MAE releases, Lightning


def read_checkpoint(path: str | Path) -> dict[str, Tensor]:
    """The state dict (timm ViT key layout) in a local file; never downloads.

    Raises:
        CheckpointError: unknown suffix, unreadable file, or no tensor dict inside.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"backbone.checkpoint: {str(path)!r} is not a file (checkpoints are local files)")
    suffix = path.suffix.lower()
    try:
        return _read(path, suffix)
    except (CheckpointError, MemoryError):
        raise
    except Exception as e:  # a truncated or foreign file: safetensors, zip, pickle and numpy errors alike
        raise CheckpointError(
            f"backbone.checkpoint: cannot read {path} as a {suffix} checkpoint ({type(e).__name__}: {str(e)[:300]}); "
            "it may be truncated or in another format: download it again, or set backbone.checkpoint to another file"
        ) from e


def _read(path: Path, suffix: str) -> dict[str, Tensor]:
    if suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    if suffix in TORCH_SUFFIXES:
        obj = torch.load(path, map_location="cpu", weights_only=True)
        for key in WRAPPERS:
            if isinstance(obj, dict) and isinstance(obj.get(key), dict):
                obj = obj[key]
        if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
            raise CheckpointError(f"backbone.checkpoint: {path} holds no state dict (tensors by name)")
        return {k.removeprefix("module."): v for k, v in obj.items()}
    if suffix == ".npz":
        return _read_npz(path)
    raise CheckpointError(
        f"backbone.checkpoint: {path.name!r} has an unknown suffix {suffix!r}; "
        f"use .safetensors, {', '.join(TORCH_SUFFIXES)} or .npz"
    )


def _read_npz(path: Path) -> dict[str, Tensor]:
    """A JAX ViT ``.npz`` through timm's loader, into a CPU timm ViT sized from the file's own arrays."""
    import numpy as np
    from timm.models.vision_transformer import VisionTransformer, _load_weights

    with np.load(path) as w:
        keys = set(w.files)
        prefix = next((p for p in ("", "opt/target/", "params/") if f"{p}embedding/kernel" in keys), None)
        if prefix is None:
            raise CheckpointError(f"backbone.checkpoint: {path} has no 'embedding/kernel': not a ViT .npz")
        p, _, in_chans, dim = w[f"{prefix}embedding/kernel"].shape  # (p, p, C, D)
        blocks = {
            int(m.group(1)) for k in keys if (m := re.match(rf"{re.escape(prefix)}Transformer/encoderblock_(\d+)/", k))
        }
        if not blocks:
            raise CheckpointError(f"backbone.checkpoint: {path}: only per-block (encoderblock_N) .npz files are read")
        block0 = f"{prefix}Transformer/encoderblock_0/"
        heads = next(w[k].shape[1] for k in keys if k.startswith(block0) and k.endswith("query/kernel"))  # (D, H, Dh)
        mlp = next(w[k].shape[1] for k in keys if k.startswith(block0) and k.endswith("Dense_0/kernel"))  # (D, M)
        has_cls = f"{prefix}cls" in keys
        pos_key = next(
            k for k in (f"{prefix}pos_embedding", f"{prefix}Transformer/posembed_input/pos_embedding") if k in keys
        )
        n_pos = w[pos_key].shape[1] - int(has_cls)
    side = math.isqrt(n_pos)
    with torch.random.fork_rng():  # building the carrier model must not move the trial's RNG
        vit = VisionTransformer(
            img_size=side * p,
            patch_size=p,
            in_chans=in_chans,
            embed_dim=dim,
            depth=max(blocks) + 1,
            num_heads=heads,
            mlp_ratio=mlp / dim,
            class_token=has_cls,
            global_pool="token" if has_cls else "avg",
            num_classes=0,
        )
    _load_weights(vit, str(path), prefix=prefix)
    return {k: v.detach().clone() for k, v in vit.state_dict().items()}


@dataclass
class ImageViT:
    """A timm ViT state dict split into the pieces the methods map (checkpoint key names kept for messages)."""

    patch_weight: Tensor  # (D, C, p, p)
    patch_bias: Tensor  # (D,)
    cls: Tensor | None  # (1, 1, D), the CLS position already added
    grid: Tensor  # (gh, gw, D), positional rows of the patches
    blocks: list[dict[str, Tensor]]  # per block: timm Block parameter name -> tensor
    norm: dict[str, Tensor]  # final LayerNorm: weight, bias
    unexpected: list[str] = field(default_factory=list)  # checkpoint keys outside the backbone

    @property
    def dim(self) -> int:
        return self.patch_weight.shape[0]


def image_vit(state: dict[str, Tensor]) -> ImageViT:
    """Split a timm ViT state dict (``patch_embed.proj``, ``cls_token``, ``pos_embed``, ``blocks.N.*``, ``norm``).

    ``pos_embed`` may hold a CLS row or not (timm ``no_embed_class``); register tokens are not supported.
    """
    need = ("patch_embed.proj.weight", "patch_embed.proj.bias", "pos_embed")
    if missing := [k for k in need if k not in state]:
        raise CheckpointError(
            f"backbone.checkpoint: no {', '.join(missing)}: not a timm ViT state dict (keys start with "
            f"{', '.join(sorted({k.split('.')[0] for k in state})[:8])})"
        )
    pos = state["pos_embed"][0]  # (N, D)
    n, dim = pos.shape
    cls = state.get("cls_token")
    if math.isqrt(n) ** 2 == n and not (cls is not None and math.isqrt(n - 1) ** 2 == n - 1):
        grid_rows, cls_pos = pos, None
    elif cls is not None and math.isqrt(n - 1) ** 2 == n - 1:
        grid_rows, cls_pos = pos[1:], pos[:1]
    else:
        raise CheckpointError(f"backbone.checkpoint: pos_embed {tuple(state['pos_embed'].shape)} is no square grid")
    side = math.isqrt(grid_rows.shape[0])
    if cls is not None and cls_pos is not None:
        cls = cls + cls_pos  # our tables have no CLS row: the CLS position goes into the token
    depth = 1 + max((int(k.split(".")[1]) for k in state if k.startswith("blocks.")), default=-1)
    blocks = [{} for _ in range(depth)]
    used = {*need, "cls_token", "norm.weight", "norm.bias"}
    for key, value in state.items():
        if key.startswith("blocks."):
            _, index, name = key.split(".", 2)
            blocks[int(index)][name] = value
            used.add(key)
    if "norm.weight" not in state:
        raise CheckpointError("backbone.checkpoint: no final norm (norm.weight); a ViT with fc_norm is not supported")
    return ImageViT(
        patch_weight=state["patch_embed.proj.weight"],
        patch_bias=state["patch_embed.proj.bias"],
        cls=cls,
        grid=grid_rows.reshape(side, side, dim),
        blocks=blocks,
        norm={"weight": state["norm.weight"], "bias": state["norm.bias"]},
        unexpected=sorted(k for k in state if k not in used),
    )


def _kernel_error(target: str, shape: torch.Size, vit: ImageViT, patch_key: str) -> CheckpointError:
    """A patch kernel that does not fit: names both keys and shapes, and which backbone field disagrees."""
    k = vit.patch_weight
    if shape[0] != k.shape[0]:
        why = f"the width differs (backbone.embed_dim={shape[0]}, checkpoint {k.shape[0]})"
    else:
        why = f"the patch differs ({patch_key}={list(shape[-2:])}, checkpoint {list(k.shape[-2:])})"
    return CheckpointError(
        f"checkpoint patch_embed.proj.weight {tuple(k.shape)} cannot fill {target} {tuple(shape)}: {why}"
    )


def arp_weights(t: int) -> Tensor:
    """Approximate-rank-pooling frame weights (Bilen et al., PAMI 2017, Eq. 3), divided by t as in scenic; (t,)."""
    frames = torch.arange(1, t + 1, dtype=torch.float64)
    harmonic = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(1.0 / frames, 0)])  # H_0 .. H_t
    alpha = 2 * (t - frames + 1) - (t + 1) * (harmonic[-1] - harmonic[:-1])
    return (alpha / t).float()


def video_kernel(vit: ImageViT, target: str, shape: torch.Size, mode: str) -> Tensor:
    """The tubelet Conv3d kernel (D, C, t, p, p) from the image kernel (D, C, p, p), per ``tubelet_init`` ``mode``."""
    k = vit.patch_weight
    if tuple(shape[:2]) + tuple(shape[3:]) != tuple(k.shape):
        raise _kernel_error(target, shape, vit, "backbone.patch_size")
    t = shape[2]
    if mode == "central":
        out = torch.zeros(shape, dtype=k.dtype)
        out[:, :, t // 2] = k
        return out
    weights = torch.full((t,), 1.0 / t) if mode == "average" else arp_weights(t)
    return k.unsqueeze(2) * weights.to(k.dtype).reshape(1, 1, t, 1, 1)


def audio_kernel(vit: ImageViT, target: str, shape: torch.Size) -> Tensor:
    """The 1-channel (D, 1, p, p) spectrogram kernel: the RGB kernel summed over channels, rows <-> columns.

    scenic repeats the (time, freq) spectrogram to 3 channels; a kernel summed over channels is the same conv on one
    channel, and the transpose makes our (freq, time) input meet it as scenic's (time, freq) does.
    """
    k = vit.patch_weight.sum(1, keepdim=True).transpose(2, 3)  # (D, 1, p, p)
    if tuple(shape) != tuple(k.shape):
        raise _kernel_error(target, shape, vit, "backbone.audio_patch (transposed: time x freq)")
    return k


def resize_grid(grid: Tensor, size: tuple[int, int]) -> Tensor:
    """(gh, gw, D) -> (h, w, D), bilinear with aligned corners (= scipy.ndimage.zoom order 1, scenic's resize)."""
    if tuple(grid.shape[:2]) == tuple(size):
        return grid
    x = grid.permute(2, 0, 1)[None].float()  # (1, D, gh, gw)
    x = F.interpolate(x, size=size, mode="bilinear", align_corners=True)
    return x[0].permute(1, 2, 0).to(grid.dtype)


def video_pos(vit: ImageViT, grid: tuple[int, int, int]) -> Tensor:
    """(1, t*h*w, D): the grid resized to (h, w) and tiled over t time steps (tokens are time-major)."""
    t, h, w = grid
    return resize_grid(vit.grid, (h, w)).reshape(1, h * w, -1).repeat(1, t, 1)


def audio_pos(vit: ImageViT, grid: tuple[int, int]) -> Tensor:
    """(1, f*t, D): the grid resized to scenic's (time, freq) and transposed to our frequency-major order."""
    f, t = grid
    return resize_grid(vit.grid, (t, f)).transpose(0, 1).reshape(1, f * t, -1)


def bottleneck_factors(n: int) -> tuple[int, int] | None:
    """scenic's grid for n bottlenecks: (int(sqrt(n)), n // that), or None when that grid does not hold n."""
    gh = math.isqrt(n)
    return (gh, n // gh) if gh * (n // gh) == n else None


def bottleneck_pos(vit: ImageViT, n: int) -> Tensor:
    """(1, n, D): the positional grid resized to ``bottleneck_factors(n)`` (scenic's bottleneck init)."""
    size = bottleneck_factors(n)
    if size is None:
        raise CheckpointError(f"method.bottleneck_init=pos: {n} bottlenecks make no int(sqrt(n)) x k grid")
    return resize_grid(vit.grid, size).reshape(1, n, -1)


Mapping = dict[str, tuple[Tensor, str]]  # our parameter name -> (value, where it came from)


def map_tokenizers(tokens: nn.Module, prefix: str, vit: ImageViT, backbone, spec) -> Mapping:
    """Patch kernels, positional tables and CLS tokens of a ``harness.models.blocks.Tokenizers`` at ``prefix``."""
    out: Mapping = {}
    for m, embed in tokens.patch.items():
        name = f"{prefix}.patch.{m}.proj"
        shape = embed.proj.weight.shape
        if m == "video":
            kernel = video_kernel(vit, f"{name}.weight", shape, backbone.tubelet_init)
            pos = video_pos(vit, video_grid(backbone, spec))
        else:
            kernel = audio_kernel(vit, f"{name}.weight", shape)
            pos = audio_pos(vit, audio_grid(backbone, spec))
        out[f"{name}.weight"] = (
            kernel,
            f"patch_embed.proj.weight ({backbone.tubelet_init if m == 'video' else 'sum'})",
        )
        out[f"{name}.bias"] = (vit.patch_bias, "patch_embed.proj.bias")
        out[f"{prefix}.pos.{m}"] = (pos, "pos_embed (resized)")
        if vit.cls is not None and m in tokens.cls:  # scenic's GAP model has no CLS token
            out[f"{prefix}.cls.{m}"] = (vit.cls, "cls_token + pos_embed[0]")
    return out


def map_blocks(blocks: nn.ModuleList, prefix: str, vit: ImageViT) -> Mapping:
    """Block l of the checkpoint into ``prefix.l``; depths and per-block parameter names must agree."""
    if len(blocks) != len(vit.blocks):
        raise CheckpointError(
            f"backbone.checkpoint has {len(vit.blocks)} blocks, {prefix} has {len(blocks)} (backbone.depth)"
        )
    out: Mapping = {}
    for i, (block, state) in enumerate(zip(blocks, vit.blocks)):
        ours = {n for n, _ in block.named_parameters()}
        if extra := sorted(set(state) - ours):
            raise CheckpointError(
                f"checkpoint blocks.{i}.{extra[0]} has no counterpart in {prefix}.{i} (layer scale or another block "
                f"type?); the checkpoint's block keys: {', '.join(sorted(state))}"
            )
        if lacking := sorted(ours - set(state)):
            raise CheckpointError(f"checkpoint has no blocks.{i}.{lacking[0]} for {prefix}.{i}.{lacking[0]}")
        out.update({f"{prefix}.{i}.{n}": (v, f"blocks.{i}.{n}") for n, v in state.items()})
    return out


def map_norm(prefix: str, vit: ImageViT) -> Mapping:
    """The final LayerNorm."""
    return {f"{prefix}.{n}": (v, f"norm.{n}") for n, v in vit.norm.items()}


def vit_mapping(tokens: nn.Module, stacks: dict[str, nn.ModuleList], vit: ImageViT, backbone, spec) -> Mapping:
    """An image ViT onto ``tokens`` (tokenisers), every block stack in ``stacks`` (prefix -> blocks) and ``norm``."""
    out = map_tokenizers(tokens, "tokens", vit, backbone, spec)
    for prefix, blocks in stacks.items():
        out |= map_blocks(blocks, prefix, vit)
    return out | map_norm("norm", vit)


@dataclass
class LoadReport:
    """What a ``load_backbone`` filled: our parameter names loaded and missing, checkpoint keys unexpected."""

    loaded: list[str]
    missing: list[str]
    unexpected: list[str]

    def summary(self, source: str = "checkpoint") -> str:
        def short(names: list[str]) -> str:
            return ", ".join(names[:6]) + (f", ... ({len(names)})" if len(names) > 6 else "") if names else "none"

        return (
            f"{source}: loaded {len(self.loaded)} tensors; kept their init: {short(self.missing)}; "
            f"unused from the file: {short(self.unexpected)}"
        )


@torch.no_grad()
def apply_mapping(module: nn.Module, mapping: Mapping, vit: ImageViT) -> LoadReport:
    """Copy every mapped value into ``module``'s parameter of that name after checking shapes.

    Raises:
        CheckpointError: a mapped name the module lacks, or a shape that differs (both keys and shapes named).
    """
    params = dict(module.named_parameters())
    for name, (value, source) in mapping.items():
        if name not in params:
            raise CheckpointError(f"{source} maps to {name}, which {type(module).__name__} does not have")
        target = params[name]
        if tuple(target.shape) != tuple(value.shape):
            raise CheckpointError(
                f"checkpoint {source} has shape {tuple(value.shape)} but {name} has {tuple(target.shape)}; "
                "check backbone.embed_dim / mlp_ratio / patch sizes against the checkpoint"
            )
        target.copy_(value.to(target.dtype))
    report = LoadReport(
        loaded=sorted(mapping), missing=sorted(n for n in params if n not in mapping), unexpected=vit.unexpected
    )
    log.info(report.summary())
    return report
