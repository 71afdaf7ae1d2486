"""The ``segmentation`` task's mask decoder: a light FPN over a method's video token grids, then progressive upsampling.

LAVISH's AVS model (GenjiB/LAVISH ``AVS/avs_scripts/avs_s4/model/PVT_AVSModel.py``, ``Pred_endecoder``) feeds the
frozen Swin-V2's four stage maps (the last after the final norm), each through a Linear, into AVSBench's decoder
(OpenNLPLab/AVSBench ``avs_scripts/avs_s4/model/``): per stage a sum of dilated 3x3 convolutions, then top-down
fusion blocks (residual convolution units, x2 bilinear upsampling) and output convolutions to one channel. This
decoder keeps that shape, lighter, over whatever grids the method returns: a hierarchical backbone's stage maps
(``stages``, the last replaced by the normed final ``tokens``, as LAVISH) or, for a plain ViT, the one grid of its
final ``tokens`` (then it is SETR-PUP's progressive upsampling). It reads the video tokens only: what the mask owes
to the audio must come through the method's fusion, which is what the task compares. Known differences: no TPAVI
(AVSBench's audio-visual attention inside the decoder: fusion in the head), one 1x1 lateral convolution per grid
instead of the dilated-convolution sum and the Linear, one 3x3 convolution + GroupNorm + ReLU per fusion and per x2
upsampling step instead of the residual units.

Shapes: ``B`` clips, ``T`` token time steps, ``h x w`` a grid, ``C_s`` a grid's width, ``C`` the decoder width,
``H x W`` the output (the frames' size).
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn


def conv_block(c_in: int, c_out: int) -> nn.Sequential:
    """3x3 convolution, GroupNorm (up to 8 groups), ReLU."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.GroupNorm(math.gcd(8, c_out), c_out), nn.ReLU())


class MaskDecoder(nn.Module):
    """Grids ``[(B, T, h_s·w_s, C_s)]``, finest first -> mask logits (B, T, H, W).

    Args:
        grids: ``(h_s, w_s, C_s)`` of every input grid, finest first.
        width: C, the decoder's channels.
        out_size: (H, W) of the logits; the finest grid is doubled ``ceil(log2(H / h_0))`` times, then resized.
    """

    def __init__(self, grids: list[tuple[int, int, int]], width: int, out_size: tuple[int, int]):
        super().__init__()
        self.grids = grids
        self.out_size = out_size
        self.lateral = nn.ModuleList(nn.Conv2d(c, width, 1) for _, _, c in grids)
        self.smooth = nn.ModuleList(conv_block(width, width) for _ in grids)
        steps = max(0, math.ceil(math.log2(max(out_size[0] / grids[0][0], out_size[1] / grids[0][1]))))
        self.up = nn.ModuleList(conv_block(width if i == 0 else max(width // 2**i, 8), max(width // 2 ** (i + 1), 8))
                                for i in range(steps))  # fmt: skip
        self.out = nn.Conv2d(max(width // 2**steps, 8) if steps else width, 1, 1)

    def forward(self, maps: list[Tensor]) -> Tensor:
        b, t = maps[0].shape[:2]
        x = None
        for s in reversed(range(len(maps))):  # coarsest first: top-down, upsample and add
            h, w, c = self.grids[s]
            y = self.lateral[s](maps[s].reshape(b * t, h, w, c).permute(0, 3, 1, 2))  # (B·T, C, h, w)
            if x is not None:
                y = y + F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
            x = self.smooth[s](y)
        for block in self.up:
            x = block(F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False))
        x = self.out(x)  # (B·T, 1, h', w')
        if tuple(x.shape[-2:]) != self.out_size:
            x = F.interpolate(x, size=self.out_size, mode="bilinear", align_corners=False)
        return x.view(b, t, *self.out_size)  # (B, T, H, W)
