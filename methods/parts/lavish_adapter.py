"""The LAVISH adapter and its latent-free variant (AVISH), shared by ``methods/lavish.py`` and ``methods/avish.py``.

Paper: Lin, Sung, Lei, Bansal, Bertasius, "Vision Transformers are Parameter-Efficient Audio-Visual Learners",
CVPR 2023, https://arxiv.org/abs/2212.07983.
Reference implementation: GenjiB/LAVISH ``AVE/nets/net_trans.py`` ``VisualAdapter`` (``adapter_kind='bottleneck'``,
``is_multimodal=1``); AVISH is the direct-attention path left commented out in ``AVE/nets/net_trans_v2.py``.
Known differences: the 1x1 grouped convs over (B, D, N, 1) are grouped linears over (B, N, D) (the same maps and
parameter counts: a conv weight (D/r, D/G, 1, 1) is this weight reshaped to (G, D/(rG), D/G)); BatchNorm statistics
in training are taken over the present clips' tokens only, and a key of an absent modality is never attended.

One adapter, X the adapted modality's tokens, Y the other modality's, T the m latent tokens:
    T~ = T + softmax(T Y^T) Y               # latent tokens gather from Y (no projections, no scaling, one head)
    X^ = X + g_av * softmax(X T~^T) T~      # AVISH (m = 0): X^ = X + g_av * softmax(X Y^T) Y
    out = g * LN_post(BN(W_up ReLU(BN(W_down LN_before(X^)))))
g_av and g are zero-initialised scalars, so a new adapter outputs 0; g is dropped for ungated (audio) adapters.

Shapes: ``B`` batch, ``N`` / ``M`` tokens of X / Y, ``m`` latent tokens, ``D`` width, ``r`` reduction, ``G`` groups.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from harness.api import MethodConfig
from harness.models.backbones import BackboneConfig
from harness.models.shared_vit import AudioOrientation, audio_orientation_field


class AdapterConfig(MethodConfig):
    """Adapter fields common to LAVISH and AVISH; defaults = the AVE Swin command of GenjiB/LAVISH's README."""

    reduction: int = Field(8, ge=1, description="r: the bottleneck is D/r wide (Adapter_downsample); must divide D")
    groups: int = Field(2, ge=1, description="G: groups of both 1x1 convs (num_conv_group); 1 = dense; must divide D/r")
    bn: bool = Field(True, description="BatchNorm after the down- and the up-projection (is_bn)")
    ln_before: bool = Field(True, description="LayerNorm on X^ before the bottleneck (is_before_layernorm)")
    ln_post: bool = Field(True, description="LayerNorm on the bottleneck's output (is_post_layernorm)")
    gate_audio: bool = Field(True, description="audio adapters' output gate g (is_gate); visual ones are always gated")
    train_norms: bool = Field(False, description="make the frozen backbone's LayerNorms trainable (is_vit_ln)")
    audio_embed: Literal["image", "spectrogram"] = Field(
        "image",
        description="image: the paper's way, the spectrogram repeated to 3 channels through the video patch "
        "embedding's 2-D kernel with the video positional table interpolated; spectrogram: the backbone's own "
        "1-channel audio patch embedding, positional table and CLS",
    )
    audio_orientation: AudioOrientation = audio_orientation_field()

    def latent(self) -> tuple[int, str]:
        """(m, init) of the latent tokens; m = 0 is direct cross-attention (AVISH)."""
        return 0, "rand"

    def check(self, backbone: BackboneConfig) -> list[tuple[str, str]]:
        d, r, g = backbone.embed_dim, self.reduction, self.groups
        if d % r:
            return [("method.reduction", f"{r} does not divide the backbone's embed_dim {d}")]
        if (d // r) % g:
            return [("method.groups", f"{g} does not divide the bottleneck width D/r = {d // r} (nor must it D)")]
        return []


def attend(q: Tensor, kv: Tensor, keep: Tensor | None = None) -> Tensor:
    """softmax(q kv^T) kv: one head, no projections, no scaling (LAVISH's cross-modal attention).

    Args:
        q: (B, Nq, D) queries.
        kv: (B, M, D) keys, which are also the values.
        keep: (B, M) bool, the keys that may be attended; a row with none gets 0 (the cross-modal term vanishes).

    Returns:
        (B, Nq, D).

    Computed by ``F.scaled_dot_product_attention`` with ``scale=1`` on (B, 1, N, D): one head of the full width.
    SDPA takes its fused kernels only for 4-D inputs (a 3-D call runs the unfused math kernel, on CPU and GPU); a
    head of D = 768 is beyond flash attention's 256 but within the memory-efficient kernel's reach on a GPU.
    """
    q4, kv4 = q[:, None], kv[:, None]  # (B, 1, Nq, D), (B, 1, M, D)
    if keep is None:
        return F.scaled_dot_product_attention(q4, kv4, kv4, scale=1.0)[:, 0]
    # An additive finite fill, not -inf: a row with no key gives a uniform softmax (no NaN, also in backward), then 0.
    fill = torch.zeros(keep.shape, dtype=q.dtype, device=q.device).masked_fill(~keep, torch.finfo(q.dtype).min)
    out = F.scaled_dot_product_attention(q4, kv4, kv4, attn_mask=fill[:, None, None, :], scale=1.0)[:, 0]
    return out * keep.any(-1)[:, None, None]  # (B, Nq, D)


class GroupedLinear(nn.Module):
    """A grouped 1x1 convolution without bias on tokens: (..., in) -> (..., out), G independent blocks."""

    def __init__(self, in_features: int, out_features: int, groups: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(groups, out_features // groups, in_features // groups))
        bound = 1 / math.sqrt(in_features // groups)  # nn.Conv2d's default init for its fan-in
        nn.init.uniform_(self.weight, -bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        g, _, i = self.weight.shape
        y = torch.einsum("...gi,goi->...go", x.unflatten(-1, (g, i)), self.weight)  # (..., G, out/G)
        return y.flatten(-2)


class TokenBatchNorm(nn.BatchNorm1d):
    """BatchNorm over the channels of (B, N, C) tokens, statistics over batch and tokens (BatchNorm2d on (B, C, N, 1)).

    In training only the given rows (clips whose modality is present) enter the statistics; the other rows are
    never read out and are set to 0; a batch without any such row leaves the running statistics as they are. In
    eval every row uses the running statistics. ``rows=None`` means every row.

    The masked statistics are weighted sums, not a selection of the rows (``x[rows]`` asks the device how many rows
    there are: a host sync per adapter, 96 per LAVISH forward at ViT-B); they equal BatchNorm over the selected rows.
    """

    def forward(self, x: Tensor, rows: Tensor | None = None) -> Tensor:
        if not self.training or rows is None:
            return super().forward(x.flatten(0, 1)).view_as(x)
        keep = rows[:, None, None]  # (B, 1, 1)
        xf = torch.where(keep, x, 0.0).float()  # statistics in fp32, also under autocast
        n = keep.sum() * x.shape[1]  # tokens entering the statistics
        mean = xf.sum((0, 1)) / n.clamp_min(1)  # (C,)
        var = (torch.where(keep, xf - mean, 0.0) ** 2).sum((0, 1)) / n.clamp_min(1)  # biased, as BatchNorm's
        y = (xf - mean) * torch.rsqrt(var + self.eps)
        if self.affine:
            y = y * self.weight + self.bias
        if self.track_running_stats:
            self._update_running(mean.detach(), var.detach() * n / (n - 1).clamp_min(1), n > 0)
        return torch.where(keep, y, 0.0).to(x.dtype)

    @torch.no_grad()
    def _update_running(self, mean: Tensor, unbiased_var: Tensor, seen: Tensor) -> None:
        """BatchNorm's running-statistics update, skipped (on the device, without a branch) when ``seen`` is False."""
        self.num_batches_tracked.add_(seen.long())
        factor = self.momentum if self.momentum is not None else 1.0 / self.num_batches_tracked.clamp_min(1)
        for stat, value in ((self.running_mean, mean), (self.running_var, unbiased_var)):
            stat.copy_(torch.where(seen, stat + factor * (value - stat), stat))


class LAVISHAdapter(nn.Module):
    """One adapter: cross-modal attention (through m latent tokens, or direct when m = 0), then a gated bottleneck.

    Args:
        dim: D.
        cfg: reduction, groups, norms.
        latent_tokens: m; 0 attends over Y directly (AVISH).
        latent_init: ``rand`` (U[0, 1), the AVE code) or ``zeros`` (the AVS / AVQA code).
        gated: whether the output is scaled by the zero-initialised gate g.
    """

    def __init__(self, dim: int, cfg: AdapterConfig, latent_tokens: int, latent_init: str, gated: bool):
        super().__init__()
        hidden = dim // cfg.reduction
        self.latent = None
        if latent_tokens:
            init = torch.rand if latent_init == "rand" else torch.zeros
            self.latent = nn.Parameter(init(1, latent_tokens, dim))
        self.gate_av = nn.Parameter(torch.zeros(()))
        self.ln_before = nn.LayerNorm(dim) if cfg.ln_before else nn.Identity()
        self.down = GroupedLinear(dim, hidden, cfg.groups)
        self.bn1 = TokenBatchNorm(hidden) if cfg.bn else None
        self.up = GroupedLinear(hidden, dim, cfg.groups)
        self.bn2 = TokenBatchNorm(dim) if cfg.bn else None
        self.ln_post = nn.LayerNorm(dim) if cfg.ln_post else nn.Identity()
        self.gate = nn.Parameter(torch.zeros(())) if gated else None

    def cross(self, x: Tensor, y: Tensor, y_keep: Tensor | None = None) -> Tensor:
        """X^ = X + g_av * (the cross-modal term); (B, N, D)."""
        if self.latent is None:
            return x + self.gate_av * attend(x, y, y_keep)
        t = self.latent.expand(x.shape[0], -1, -1)  # (B, m, D)
        t = t + attend(t, y, y_keep)  # (B, m, D): T~
        return x + self.gate_av * attend(x, t)

    def forward(self, x: Tensor, y: Tensor, y_keep: Tensor | None = None, x_rows: Tensor | None = None) -> Tensor:
        """The adapter's output, added to the stream beside the MHSA or the FFN branch.

        Args:
            x: (B, N, D) the adapted modality's tokens.
            y: (B, M, D) the other modality's tokens.
            y_keep: (B, M) bool, which of y may be attended; None = all.
            x_rows: (B,) bool, clips whose x is present (BatchNorm statistics in training); None = all.
        """
        z = self.down(self.ln_before(self.cross(x, y, y_keep)))  # (B, N, D/r)
        z = F.relu(z if self.bn1 is None else self.bn1(z, x_rows))
        z = self.up(z)  # (B, N, D)
        z = self.ln_post(z if self.bn2 is None else self.bn2(z, x_rows))
        return z if self.gate is None else self.gate * z
