"""Short-term CNN front ends of ``backbone.family: cnn``: one embedding per short clip (AVBERT's layout).

Lee et al., "Parameter Efficient Multimodal Transformers for Video Representation Learning" (ICLR 2021,
https://arxiv.org/abs/2012.04124) embed each short clip of a long video with a visual 3-D CNN (SlowFast-codebase
3-D ResNet-50) and each clip's log-mel window with an audio 2-D CNN (ResNet-50), project the pooled features to the
transformer width and LayerNorm them (sangho-vision/avbert ``code/models/avbert.py``: ``visual_conv`` /
``audio_conv`` followed by a linear map and ``LayerNorm``). The sequence of K clip embeddings is the transformer's
input. Here the CNNs are torchvision's video ResNets and timm's ResNets, randomly initialised (nothing is
downloaded), or small 2-stage versions built from the same libraries' blocks for CPU runs (``tiny_*``).

A sample of T frames and F spectrogram columns is K consecutive clips (``InputSpec.clips``): clip k holds frames
[k T/K, (k + 1) T/K) and columns [k F/K, (k + 1) F/K).

Shapes: ``B`` batch, ``K`` clips per sample, ``T`` frames, ``F`` spectrogram columns, ``M`` mel bins, ``D`` width.
"""

from __future__ import annotations

from torch import Tensor, nn

from harness.api import InputSpec

VIDEO_CNNS = ("r3d_18", "mc3_18", "r2plus1d_18", "tiny_r3d", "tiny_r2plus1d")


def _tiny_video(kind: str, width: int) -> tuple[nn.Module, int]:
    """A 2-stage video ResNet of torchvision's ``BasicBlock`` (3-D or (2+1)-D convolutions): width, then 2 x width."""
    from torchvision.models.video.resnet import BasicBlock, Conv2Plus1D, Conv3DSimple

    conv = Conv3DSimple if kind == "tiny_r3d" else Conv2Plus1D
    # torchvision's stems are fixed at 64 channels; these are its BasicStem / R2Plus1dStem at ``width``
    if kind == "tiny_r3d":
        stem = nn.Sequential(
            nn.Conv3d(3, width, (3, 7, 7), stride=(1, 2, 2), padding=(1, 3, 3), bias=False),
            nn.BatchNorm3d(width),
            nn.ReLU(inplace=True),
        )
    else:  # R(2+1)D's stem factorised as torchvision's, at this width
        stem = nn.Sequential(
            nn.Conv3d(3, width, (1, 7, 7), stride=(1, 2, 2), padding=(0, 3, 3), bias=False),
            nn.BatchNorm3d(width),
            nn.ReLU(inplace=True),
            nn.Conv3d(width, width, (3, 1, 1), padding=(1, 0, 0), bias=False),
            nn.BatchNorm3d(width),
            nn.ReLU(inplace=True),
        )
    down = nn.Sequential(nn.Conv3d(width, 2 * width, 1, stride=2, bias=False), nn.BatchNorm3d(2 * width))
    body = nn.Sequential(
        stem,
        BasicBlock(width, width, conv),
        BasicBlock(width, 2 * width, conv, stride=2, downsample=down),
        nn.AdaptiveAvgPool3d(1),
        nn.Flatten(),
    )
    return body, 2 * width


def video_cnn(name: str, width: int) -> tuple[nn.Module, int]:
    """(module mapping (N, 3, t, H, W) -> (N, C), C) for ``backbone.video_cnn``."""
    if name.startswith("tiny_"):
        return _tiny_video(name, width)
    from torchvision.models import video

    net = getattr(video, name)(weights=None)
    features = net.fc.in_features
    net.fc = nn.Identity()
    return net, features


def audio_cnn(name: str, width: int) -> tuple[nn.Module, int]:
    """(module mapping (N, 1, M, f) -> (N, C), C) for ``backbone.audio_cnn``: a timm model with pooled features."""
    import timm
    from timm.models.resnet import BasicBlock, ResNet

    if name == "tiny_resnet":
        # timm's forward runs four stages: one BasicBlock each, at width, 2, 4 and 8 x width
        channels = tuple(width * 2**i for i in range(4))
        net = ResNet(BasicBlock, (1, 1, 1, 1), channels=channels, in_chans=1, num_classes=0, stem_width=width)
    else:
        net = timm.create_model(name, pretrained=False, in_chans=1, num_classes=0)
    return net, net.num_features


class ClipEmbed(nn.Module):
    """A CNN over each of a sample's K clips, its pooled features projected to D and LayerNormed (AVBERT).

    Args:
        cnn: maps a batch of clips to pooled features (N, C).
        features: C.
        dim: D, the transformer width.
        clips: K.
    """

    def __init__(self, cnn: nn.Module, features: int, dim: int, clips: int):
        super().__init__()
        self.cnn, self.clips = cnn, clips
        self.proj = nn.Linear(features, dim)
        self.norm = nn.LayerNorm(dim)

    def embed(self, clips: Tensor) -> Tensor:
        """(B·K, ...) clips -> (B·K, D)."""
        return self.norm(self.proj(self.cnn(clips)))


class VideoClipCNN(ClipEmbed):
    """(B, T, 3, H, W) video -> (B, K, D): the 3-D CNN on each of the K clips of T/K frames."""

    def __init__(self, cfg, spec: InputSpec):
        cnn, features = video_cnn(cfg.video_cnn, cfg.cnn_width)
        super().__init__(cnn, features, cfg.embed_dim, spec.clips)

    def forward(self, video: Tensor) -> Tensor:
        b, t, c, h, w = video.shape
        k = self.clips
        x = video.reshape(b * k, t // k, c, h, w).transpose(1, 2)  # (B·K, 3, T/K, H, W): torchvision's layout
        return self.embed(x).view(b, k, -1)


class AudioClipCNN(ClipEmbed):
    """(B, 1, M, F) log-mel -> (B, K, D): the 2-D CNN on each of the K windows of F/K columns."""

    def __init__(self, cfg, spec: InputSpec):
        cnn, features = audio_cnn(cfg.audio_cnn, cfg.cnn_width)
        super().__init__(cnn, features, cfg.embed_dim, spec.clips)

    def forward(self, audio: Tensor) -> Tensor:
        b, c, m, f = audio.shape
        k = self.clips
        x = audio.reshape(b, c, m, k, f // k).permute(0, 3, 1, 2, 4).reshape(b * k, c, m, f // k)  # (B·K, 1, M, F/K)
        return self.embed(x).view(b, k, -1)


def clip_errors(spec: InputSpec) -> list[tuple[str, str]]:
    """A sample must split into ``clips`` equal clips in both modalities."""
    errors = []
    if spec.frames % spec.clips:
        errors.append(("dataset.clips_per_sample", f"{spec.clips} does not divide the {spec.frames} frames"))
    if spec.n_frames % spec.clips:
        errors.append(("dataset.clips_per_sample", f"{spec.clips} does not divide the {spec.n_frames} spectrogram "
                       "frames"))  # fmt: skip
    return errors


def parts(module: nn.Module) -> dict[str, int]:
    """Parameters of each CNN front end inside ``module`` (its ``ClipEmbed`` s by name), for ``harness profile``."""
    return {n: sum(p.numel() for p in m.parameters()) for n, m in module.named_modules() if isinstance(m, ClipEmbed)}
