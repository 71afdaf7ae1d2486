"""LAVISH: one frozen ViT shared by audio and video, bridged by latent-token audio-visual adapters in every block.

Paper: Lin, Sung, Lei, Bansal, Bertasius, "Vision Transformers are Parameter-Efficient Audio-Visual Learners",
CVPR 2023, https://arxiv.org/abs/2212.07983.
Reference implementation: GenjiB/LAVISH ``AVE/nets/net_trans.py`` (``MMIL_Net.forward_vit``, ``VisualAdapter``).
Known differences:
- Segments: the AVE code runs each of a video's 10 frames as an image paired with its own 1-s spectrogram and
  classifies each pair. Here that is the ``localization`` task's ``scoring: segment`` (default;
  ``harness.api.segments``: the clip's (frame, window) pairs folded into the batch, as the code's ``rearrange``) with
  the ``lavish_vit`` / ``lavish_swin`` front end (10 one-second windows at the code's starts, normalised then
  zero-padded, ``harness/data/frontend.py``). Several frames per segment are tokenised jointly (tubelets).
- Audio (``audio_embed: image``, the default, the paper's way): the (1, n_mels, n_frames) log-mel is repeated to 3
  channels and goes through the video patch embedding's 2-D kernel (the central frame t//2 of a tubelet kernel, as
  MBT's central-frame inflation puts the image kernel there) with no resizing; the video positional table is 1-D
  linearly interpolated over the token index to the audio token count, and the one CLS is prepended to both. Our
  tables hold no CLS row (MBT's convention), so only the patch rows are interpolated (the AVE code's ``my_vit``
  interpolates the whole 1 + 196 table, CLS row included, to 1 + Na: a remaining difference). The image is the AVE
  code's (time x mel) one (``audio_orientation: time_mel``, default; ``AVE/dataloader.py`` keeps Kaldi's (frames,
  mel) fbank, the paper does not say), so audio tokens are time-major; ``mel_time`` feeds our (mel x time) array as
  it is (the harness before; with a pretrained ViT the two give different frozen features for the same sound,
  ``tests/models/test_weights.py``). ``audio_embed: spectrogram`` uses the backbone's own 1-channel audio patch
  embedding, audio positional table and audio CLS (``Tokenizers``), which a 1-channel checkpoint (AST-style) fills.
- Head: LAVISH's AVE head concatenates [a_cls; v_cls] -> Linear(2D, 512) -> Linear(512, 29) (no nonlinearity) under
  nn.BCELoss on the softmax. By default the task's one shared head scores each modality's CLS (``per_modality``, as
  MBT), so all methods are compared under the same head; the code's head and loss are the ``localization`` task's
  ``head_input: concat``, ``hidden: 512``, ``loss: bce_softmax`` (tested against the code written out,
  ``tests/tasks/test_tasks.py``), and the paper's parameter accounting is the cost presets' ``paper`` line.
- Weights: ``backbone.checkpoint`` loads an image ViT (timm layout, e.g. ``vit_base_patch16_224_in21k``) into the
  frozen backbone (``harness/models/weights.py``): its 2-D patch kernel goes into the tubelet's central frame (which the
  audio path reads, so it meets exactly the image kernel), the positional grid is resized/tiled to the video grid,
  and the CLS position is folded into the CLS token. The AVE code instead uses timm's model as it is.
- Swin-V2 (the README's default backbone): with ``backbone.family: swinv2`` (presets ``swinv2_b``, ``swinv2_l``)
  ``LAVISH.build`` builds ``methods.parts.swin_lavish.SwinLAVISH`` instead, the same adapters in timm's frozen
  Swin-V2 blocks (its header lists what differs there).
- ``start_tune_layers`` (skip adapters below layer k) is not ported (its default, 0, is what runs here).

Update rule of block l (both directions from the same states, ViT pre-norm branches; the code's forward_vit):
    a1 = A_p1(z_a, z_v);  v1 = V_p1(z_v, z_a)
    z_m <- z_m + DropPath(Attn(LN1 z_m)) + m1          for m in (a, v)
    a2 = A_p2(z_a, z_v);  v2 = V_p2(z_v, z_a)           # from the updated states
    z_m <- z_m + DropPath(MLP(LN2 z_m)) + m2
Read-out: CLS_m after the backbone's final LayerNorm, per modality. Frozen: patch embedding, positional tables, CLS,
time table, blocks; the backbone's LayerNorms train only with ``train_norms``. Adapters:
``methods/parts/lavish_adapter.py``; the frozen backbone, shared with the parameter-efficient baselines:
``harness/models/shared_vit.py``.

Shapes: ``B`` batch, ``Nv`` / ``Na`` video / audio tokens, ``D`` width, ``L`` layers, ``m`` latent tokens.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field
from torch import Tensor, nn

from harness.api import FusionMethod, InputSpec, complete, present_masks, stream_masks
from harness.models.backbones import BackboneConfig
from harness.models.blocks import readout_cls
from harness.models.shared_vit import FrozenBackbone
from methods.parts.lavish_adapter import AdapterConfig, LAVISHAdapter
from methods.parts.swin_lavish import SwinLAVISH

OTHER = {"audio": "video", "video": "audio"}


class LAVISHConfig(AdapterConfig):
    """LAVISH's adapter flags; defaults = the README's AVE Swin command (r 8, 2 groups, 2 tokens, BN, LNs, gates)."""

    families: ClassVar[tuple[str, ...]] = ("vit", "swinv2")

    latent_tokens: int = Field(2, ge=1, description="m, latent tokens per adapter (num_tokens); cost grows with m")
    latent_init: Literal["rand", "zeros"] = Field(
        "rand", description="rand: U[0, 1) (the paper and the AVE code); zeros: the AVS / AVQA code"
    )

    def latent(self) -> tuple[int, str]:
        return self.latent_tokens, self.latent_init


class LAVISH(FrozenBackbone):
    """A frozen shared ViT over each modality; 4 adapters per block carry audio <-> video information."""

    Config = LAVISHConfig
    token_outputs = True  # forward returns tokens (with_tokens)
    positions: ClassVar[tuple[str, ...]] = ("p1", "p2")  # beside the MHSA, beside the FFN

    contract_variants = (
        {"audio_embed": "spectrogram", "latent_init": "zeros"},
        {"audio_orientation": "mel_time"},
        {"bn": False, "ln_before": False, "ln_post": False, "gate_audio": False, "train_norms": True, "groups": 1},
        {"backbone": "swinv2"},
        {"backbone": "swinv2", "train_norms": True, "bn": False, "audio_orientation": "mel_time"},
    )

    @classmethod
    def build(cls, cfg: AdapterConfig, backbone: BackboneConfig, spec: InputSpec) -> FusionMethod:
        """A ViT backbone builds this class; a Swin-V2 one the same adapters in timm's Swin-V2 blocks
        (``methods/parts/swin_lavish.py``)."""
        if backbone.family == "swinv2":
            return SwinLAVISH(cfg, backbone, spec)
        return cls(cfg, backbone, spec)

    def __init__(self, cfg: AdapterConfig, backbone: BackboneConfig, spec: InputSpec):
        super().__init__(cfg, backbone, spec)  # the frozen shared tokeniser, blocks and final norm
        m, init = cfg.latent()
        self.adapters = nn.ModuleDict(
            {
                f"{mod}_{pos}": nn.ModuleList(
                    LAVISHAdapter(backbone.embed_dim, cfg, m, init, gated=mod == "video" or cfg.gate_audio)
                    for _ in range(backbone.depth)
                )
                for pos in self.positions
                for mod in self.modalities
            }
        )

    def adapt(self, pos: str, layer: int, z: dict[str, Tensor], keys: dict[str, Tensor], present: dict) -> dict:
        """{m: adapter_{m,pos,layer}(z_m, z_other)}, every modality from the same states z."""
        return {m: self.adapters[f"{m}_{pos}"][layer](x, z[OTHER[m]], keys[OTHER[m]], present[m]) for m, x in z.items()}

    def forward(self, batch: dict) -> dict:
        present, full = present_masks(batch, self.modalities), complete(batch, self.modalities)
        z = self.tokens(batch, present, full)  # m -> (B, 1 + N_m, D)
        own = stream_masks(z, present, full)  # m -> (B, 1, 1, 1 + N_m) or None
        keys = {m: None if full else present[m][:, None].expand(-1, x.shape[1]) for m, x in z.items()}  # (B, 1 + N_m)
        rows = dict.fromkeys(present) if full else present  # BatchNorm rows; None: all
        for layer, blk in enumerate(self.blocks):
            res = self.adapt("p1", layer, z, keys, rows)
            mhsa = {m: blk.drop_path1(blk.ls1(blk.attn(blk.norm1(x), attn_mask=own[m]))) for m, x in z.items()}
            z = {m: x + mhsa[m] + res[m] for m, x in z.items()}
            res = self.adapt("p2", layer, z, keys, rows)
            z = {m: x + blk.drop_path2(blk.ls2(blk.mlp(blk.norm2(x)))) + res[m] for m, x in z.items()}
        z = {m: self.norm(x) for m, x in z.items()}
        return self.with_tokens(readout_cls(z, present), z, present)
