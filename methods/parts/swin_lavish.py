"""LAVISH and AVISH on a frozen Swin Transformer V2 shared by audio and video (the LAVISH README's default backbone).

Paper: Lin, Sung, Lei, Bansal, Bertasius, "Vision Transformers are Parameter-Efficient Audio-Visual Learners",
CVPR 2023, https://arxiv.org/abs/2212.07983.
Reference implementation: GenjiB/LAVISH ``AVE/nets/net_trans.py`` (``MMIL_Net.forward_swin``), timm 0.6.7's
``swinv2_large_window12_192_22k``.

``methods/lavish.py`` builds this class when ``backbone.family`` is ``swinv2``; the adapters, their flags and their
update rule are LAVISH's (``methods/parts/lavish_adapter.py``), only the backbone differs:

- The backbone is timm 1.0's ``SwinTransformerV2`` (residual post-norm blocks, cosine window attention with a
  continuous relative position bias, patch merging between stages), frozen, built with dynamic window masks so
  that one set of weights runs both the image and the spectrogram grid. timm 1.0 merges patches at the start of
  stages 1-3 where timm 0.6 merged at the end of stages 0-2: the same operations in the same order.
- Both modalities go through the same patch embedding: the log-mel repeated to 3 channels, no resizing, no
  positional table (Swin-V2 has none), as a (time x mel) image by default (``audio_orientation: time_mel``, the AVE
  code's ``dataloader.py`` + ``forward_swin``; ``mel_time`` is the harness's former (mel x time) image). Frame t
  of a clip is paired with audio window t, the spectrogram cut into ``frames`` equal windows along time (the AVE
  code's 10 frames and 10 one-second windows, folded into the batch); each pair runs through the backbone as one
  (image, spectrogram) pair.
- Every block of every stage gets LAVISH's 4 adapters at that stage's width (192/384/768/1536 for Swin-V2-L), and
  the cross-modal attention of a pair runs over the other modality's tokens of the same pair and stage.
- Read-out: after the backbone's final LayerNorm each modality's tokens are mean-pooled (the code's Swin read-out),
  then averaged over the clip's pairs; the task's shared head scores each modality's vector (``per_modality``), as
  for every method here. With the ``localization`` task's ``scoring: segment`` each (frame, 1-s window) pair is a
  clip of its own (``harness.api.segments``), so nothing is averaged and every pair is scored, as in the AVE code.
  The code's head (Linear(2C, 512) -> Linear(512, 29) on [v; a] per pair, BCE on the softmax) is the task's
  ``head_input: concat``, ``hidden: 512``, ``loss: bce_softmax`` (it concatenates [a; v], as ``forward_vit``: a
  permutation of the first layer's inputs); its parameters are counted on the preset's ``paper`` line
  (``harness/run/profiles/lavish_swinv2l_ave.yaml``).
- ``backbone.checkpoint`` loads a timm Swin-V2 state dict as it is (timm's own filter maps the 0.6 layout); the
  ImageNet-22k head is left out. ``backbone.pretrained: synthetic`` (a ViT) does not apply.

Block update (Swin-V2 res-post-norm branches; the code's ``forward_swin``), tokens flattened for the adapters:
    a1 = A_p1(z_a, z_v);  v1 = V_p1(z_v, z_a)
    z_m <- z_m + DropPath(LN1(WindowAttn(z_m))) + m1
    a2 = A_p2(z_a, z_v);  v2 = V_p2(z_v, z_a)
    z_m <- z_m + DropPath(LN2(MLP(z_m))) + m2

Shapes: ``B`` batch, ``T`` frames (pairs per clip), ``P = B·T`` pairs, ``h x w`` a stage's token grid, ``C_s`` the
stage width, ``C`` the last stage's.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from timm.models.swin_transformer_v2 import SwinTransformerV2, WindowAttention, checkpoint_filter_fn
from torch import Tensor, nn

from harness.api import (
    CheckpointError,
    FusionMethod,
    InputSpec,
    StageLayout,
    TokenLayout,
    complete,
    mean_over_modalities,
    present_masks,
)
from harness.models.backbones import BackboneConfig
from harness.models.weights import LoadReport
from methods.parts.lavish_adapter import AdapterConfig, LAVISHAdapter

OTHER = {"audio": "video", "video": "audio"}


class SDPAWindowAttention(WindowAttention):
    """timm's Swin-V2 window attention computed by ``F.scaled_dot_product_attention`` (same parameters and outputs).

    Cosine attention: softmax(τ_h · cos(q, k) + 16 σ(CPB) + shift mask) v. The per-head temperature τ_h is folded
    into the normalised queries, so the kernel runs with ``scale=1`` and the position bias (plus the shifted-window
    mask) as its additive mask.
    """

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """(B·nW, N, C) windows -> (B·nW, N, C); ``mask``: (nW, N, N) additive, or None."""
        b_, n, c = x.shape
        bias = torch.cat((self.q_bias, self.k_bias, self.v_bias)) if self.q_bias is not None else None
        qkv = F.linear(x, self.qkv.weight, bias).reshape(b_, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B·nW, H, N, d)
        tau = torch.clamp(self.logit_scale, max=math.log(1.0 / 0.01)).exp()  # (H, 1, 1)
        q, k = F.normalize(q, dim=-1) * tau, F.normalize(k, dim=-1)
        table = self.cpb_mlp(self.relative_coords_table).view(-1, self.num_heads)
        pos = table[self.relative_position_index.view(-1)].view(n, n, -1).permute(2, 0, 1)  # (H, N, N)
        pos = 16 * torch.sigmoid(pos)
        if mask is not None:  # windows are batch-major: (B, nW·H, N, d) against a (nW·H, N, N) mask, 4-D for SDPA
            nw = mask.shape[0]
            q, k, v = (t.reshape(-1, nw * t.shape[1], *t.shape[2:]) for t in (q, k, v))  # a copy: heads are strided
            pos = (pos[None] + mask[:, None].to(pos.dtype)).flatten(0, 1)
        drop = self.attn_drop.p if self.training else 0.0
        # a 4-D bias (1, heads, N, N): SDPA sends a 3-D mask to its unfused math kernel
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=pos[None], dropout_p=drop, scale=1.0)
        return self.proj_drop(self.proj(out.reshape(b_, self.num_heads, n, -1).transpose(1, 2).reshape(b_, n, c)))


def make_swinv2(cfg: BackboneConfig, spec: InputSpec) -> SwinTransformerV2:
    """timm's Swin-V2 of ``cfg`` without a classifier, with window masks built per input size, attention by SDPA."""
    n = len(cfg.stage_depths)
    model = SwinTransformerV2(
        img_size=spec.image_size,
        patch_size=cfg.patch_size,
        num_classes=0,
        embed_dim=cfg.embed_dim,
        depths=tuple(cfg.stage_depths),
        num_heads=tuple(cfg.num_heads * 2**i for i in range(n)),
        window_size=cfg.window_size,
        mlp_ratio=cfg.mlp_ratio,
        drop_path_rate=cfg.drop_path,
        strict_img_size=False,
    )
    for module in model.modules():
        if type(module) is WindowAttention:
            module.__class__ = SDPAWindowAttention  # the same module and state dict, another forward
    return model


class SwinLAVISH(FusionMethod):
    """A frozen shared Swin-V2 over (frame, audio window) pairs; 4 LAVISH adapters (m = 0: AVISH) per block.

    Args:
        cfg: LAVISH's or AVISH's adapter flags (``cfg.latent()`` gives m and the latent init).
        backbone: a ``family: swinv2`` backbone.
        spec: the dataset's input shapes.
    """

    frozen_prefix: ClassVar[str | None] = None  # no frozen tokeniser output to cache (harness/run/frozen_cache.py)
    positions: ClassVar[tuple[str, ...]] = ("p1", "p2")
    token_outputs: ClassVar[bool] = True  # the final tokens and every stage's map (stages)

    def __init__(self, cfg: AdapterConfig, backbone: BackboneConfig, spec: InputSpec):
        super().__init__(cfg, backbone, spec)
        if errors := cfg.check(backbone) + backbone.check(spec):
            raise ValueError("; ".join(f"{key}: {msg}" for key, msg in errors))
        self.swin = make_swinv2(backbone, spec)
        self.swin.requires_grad_(False)
        if cfg.train_norms:  # is_vit_ln: the backbone's LayerNorms (incl. the post-norms and patch merging's)
            for module in self.swin.modules():
                if isinstance(module, nn.LayerNorm):
                    module.requires_grad_(True)
        self.embed_dim = backbone.out_dim
        widths = [w for w, d in zip(backbone.stage_widths(), backbone.stage_depths, strict=True) for _ in range(d)]
        m, init = cfg.latent()
        self.adapters = nn.ModuleDict(
            {
                f"{mod}_{pos}": nn.ModuleList(
                    LAVISHAdapter(w, cfg, m, init, gated=mod == "video" or cfg.gate_audio) for w in widths
                )
                for pos in self.positions
                for mod in self.modalities
            }
        )

    def pairs(self, batch: dict, present: dict[str, Tensor]) -> tuple[dict[str, Tensor], Tensor]:
        """The clip as T (frame, audio window) image pairs: ``{m: (P, 3, H_m, W_m)}`` and the pair -> clip map."""
        video, audio = batch["video"], batch["audio"]  # (B, T, 3, H, W), (B, 1, F, Tf)
        b, t = video.shape[:2]
        video = torch.where(present["video"][:, None, None, None, None], video, 0.0).flatten(0, 1)  # (P, 3, H, W)
        audio = torch.where(present["audio"][:, None, None, None], audio, 0.0)  # placeholder -> 0, even NaN
        audio = audio.unflatten(-1, (t, audio.shape[-1] // t)).movedim(3, 1).flatten(0, 1)  # (P, 1, F, Tf/T)
        if self.cfg.audio_orientation == "time_mel":
            audio = audio.transpose(2, 3)  # (P, 1, Tf/T, F): the AVE code's (time x mel) image
        clip = torch.arange(b, device=video.device).repeat_interleave(t)  # (P,)
        return {"audio": audio.expand(-1, 3, -1, -1), "video": video}, clip

    def forward(self, batch: dict) -> dict:
        present, full = present_masks(batch, self.modalities), complete(batch, self.modalities)
        images, clip = self.pairs(batch, present)
        rows = {m: None if full else p[clip] for m, p in present.items()}  # (P,): the pair's modality is present
        z = {m: self.swin.patch_embed(x) for m, x in images.items()}  # (P, h, w, C_0)
        layer, stages = 0, []
        for stage in self.swin.layers:
            z = {m: stage.downsample(x) for m, x in z.items()}  # (P, h/2, w/2, C_s) from stage 1 on
            for blk in stage.blocks:
                res = self.adapt("p1", layer, z, rows)
                z = {m: x + blk.drop_path1(blk.norm1(blk._attn(x))) + res[m] for m, x in z.items()}
                res = self.adapt("p2", layer, z, rows)
                z = {m: x + blk.drop_path2(blk.norm2(blk.mlp(x))) + res[m] for m, x in z.items()}
                layer += 1
            stages.append(z)
        final = {m: self.swin.norm(x) for m, x in z.items()}  # (P, h, w, C)
        pooled = {m: x.mean(dim=(1, 2)) for m, x in final.items()}  # (P, C) per pair
        b = batch["video"].shape[0]
        per_clip = {m: x.unflatten(0, (b, -1)).mean(1) for m, x in pooled.items()}  # (B, C): mean over the T pairs
        return {
            "embedding": mean_over_modalities(per_clip, present),
            "per_modality": per_clip,
            "tokens": self.clip_tokens(final, present, b),
            "stages": [self.clip_tokens(x, present, b) for x in stages],
        }

    @staticmethod
    def clip_tokens(z: dict[str, Tensor], present: dict[str, Tensor], b: int) -> dict[str, Tensor]:
        """Pairs' grids ``{m: (P, h, w, C_s)}`` as a clip's tokens: video (B, T, h·w, C_s), audio (B, T·h_a·w_a, C_s)
        (pair-major), an absent modality's rows 0."""
        out = {}
        for m, x in z.items():
            x = x.flatten(1, 2).unflatten(0, (b, -1))  # (B, T, h·w, C_s)
            x = torch.where(present[m].view(-1, 1, 1, 1), x, torch.zeros((), dtype=x.dtype, device=x.device))
            out[m] = x if m == "video" else x.flatten(1, 2)
        return out

    def token_layout(self) -> TokenLayout:
        """Every stage's grids: the patch grid of a frame and of an audio window's image, halved (rounded up: timm's
        patch merging pads) from stage 1 on; audio tokens pair-major, so token i covers pair i // (h_a·w_a)."""
        spec, p, t = self.spec, self.backbone.patch_size, self.spec.frames
        rows, cols = spec.n_frames // t, spec.n_mels  # an audio window's image, time x mel
        if self.cfg.audio_orientation != "time_mel":
            rows, cols = cols, rows
        grids = {"video": (spec.image_size // p, spec.image_size // p), "audio": (rows // p, cols // p)}
        stages = []
        for i, c in enumerate(self.backbone.stage_widths()):
            if i:
                grids = {m: (-(-h // 2), -(-w // 2)) for m, (h, w) in grids.items()}
            (hv, wv), (ha, wa) = grids["video"], grids["audio"]
            stages.append(StageLayout(video=(t, hv, wv, c), audio=(t * ha * wa, c)))
        na = stages[-1].audio[0]
        per_pair = na // t
        return TokenLayout(video=stages[-1].video, audio=stages[-1].audio, audio_steps=t,
                           audio_time=tuple(i // per_pair for i in range(na)), stages=tuple(stages))  # fmt: skip

    def adapt(self, pos: str, layer: int, z: dict[str, Tensor], rows: dict[str, Tensor]) -> dict[str, Tensor]:
        """{m: adapter_{m,pos,layer}(z_m, z_other)} on flattened tokens, reshaped back to each grid."""
        flat = {m: x.flatten(1, 2) for m, x in z.items()}  # (P, h·w, C_s)
        keep = {m: None if rows[m] is None else rows[m][:, None].expand(-1, x.shape[1]) for m, x in flat.items()}
        out = {}
        for m, x in flat.items():
            y = self.adapters[f"{m}_{pos}"][layer](x, flat[OTHER[m]], keep[OTHER[m]], rows[m])
            out[m] = y.view_as(z[m])
        return out

    def load_backbone(self, state_dict: dict[str, Tensor]) -> LoadReport:
        """Load a timm Swin-V2 state dict (either timm layout; the classifier head is not used) into the backbone.

        Raises:
            CheckpointError: a tensor whose shape differs from the backbone's (another size or window).
        """
        state = checkpoint_filter_fn(dict(state_dict), self.swin)
        head = sorted(k for k in state if k.startswith("head."))
        state = {k: v for k, v in state.items() if not k.startswith("head.")}
        own = self.swin.state_dict()
        wrong = [f"{k} {tuple(v.shape)} vs ours {tuple(own[k].shape)}" for k, v in state.items()
                 if k in own and own[k].shape != v.shape]  # fmt: skip
        if wrong:
            raise CheckpointError(
                f"the checkpoint is not a {self.backbone.name} Swin-V2 (shapes differ: {wrong[:3]}); "
                "set backbone.name to the checkpoint's size and window"
            )
        result = self.swin.load_state_dict(state, strict=False)
        loaded = [f"swin.{k}" for k in state if k in own]
        return LoadReport(loaded, [f"swin.{k}" for k in result.missing_keys], list(result.unexpected_keys) + head)
