"""Shared low-rank multimodal transformer (AVBERT): unimodal and multimodal encoders whose every linear map is
U·Q_k·normalize(V_kᵀx) + b, with U shared and V_k, orthogonal Q_k private to the modality group k.

Paper: Lee, Yu, Kim, Breuel, Kautz, Song, "Parameter Efficient Multimodal Transformers for Video Representation
Learning", ICLR 2021, https://arxiv.org/abs/2012.04124 (reported: Transformer parameters from 128 M to 4 M, -97 %).
Init and step size (the paper is silent on both; docs/methods.md has the measurements):
- ``init: matched`` (default): V_k xavier, U xavier rescaled (:func:`matched_gain`) so that the whole map's output has
  the variance of a xavier-initialised full N -> M matrix. With the L2 normalisation, per-factor xavier (``xavier``)
  starts each map about sqrt(N) times too small. ``code`` is what the AVBERT code runs: its classifier calls
  ``utils/weight_init_helper.py``'s ``init_weights(self, cfg.MODEL.FC_INIT_STD)`` over the whole model, N(0, 0.01)
  for every ``nn.Linear`` (U, V_k) and ``nn.Embedding`` (positional and token-type tables), biases 0; BERT's own
  ``_init_weights`` (N(0, INITIALIZER_RANGE = 0.02)) is defined in ``bert.py`` / ``albert.py`` but never called
  (``Bert.__init__`` comments out ``self.init_weights()``). ``bert`` is that uncalled N(0, 0.02), kept because the
  measurements in docs/methods.md used it.
- ``factor_lr_scale: 1/3`` (default): under Adam each of the three factors moves about lr per entry and step, so
  U·Q_k·V_kᵀ moved 2.4× as far per step as one xavier matrix (rank = D, no L2) and trained like a full-rank model at
  3× lr (stuck near chance). Each factor is stored divided by the scale (:class:`StepScale`): equations, init and
  parameter counts are unchanged, only the optimiser's step on U, V_k and Q_k's generator shrinks. The code uses
  one learning rate for everything (``factor_lr_scale: 1``).
Reference implementation: sangho-vision/avbert ``code/models/{factor_linear,albert,bert,avbert}.py``, ``config.py``
(``SHARING_ACROSS_LAYERS``, ``SHARING_ACROSS_MODELS``, ``USE_DECOMPOSITION``, ``ORTHOGONAL_SIZE = 128``).
Paper vs official code vs here:
- Inputs: AVBERT feeds per-clip CNN embeddings (3-D / 2-D ResNet-50, 10 clips). ``backbone.family: cnn`` with
  ``dataset.clips_per_sample: K`` is that model (harness/models/cnn.py): a visual 3-D CNN on each of the K short
  clips (torchvision's r3d_18 / mc3_18 / r2plus1d_18, or a tiny 2-stage one for CPU; the paper's is a SlowFast-codebase
  3-D ResNet-50, not in torchvision) and an audio 2-D CNN on each clip's log-mel window (a timm ResNet with one input
  channel; the code's AudioResNet-50 is a width-32-per-group variant), pooled, projected to D and LayerNormed as the
  code's ``visual_conv`` / ``audio_conv`` heads; then ``[BOS ‖ clips + temporal table]`` per modality (the tokeniser's
  positional table has K entries, one per clip; ``cnn_tiny`` adds the shared time table). Differences: the clips of
  a sample are consecutive cuts of one clip's frames and of its spectrogram (AVBERT decodes each short clip and
  computes its own 80 x 128 log-mel), random init only (no released CNN weights are loaded), and the BOS is
  zero-initialised (code: an ``nn.Embedding`` under ``init_weights``). The ViT family feeds the harness tokenisers'
  patch tokens, each modality's ``[CLS ‖ patches + pos]``. The CLS is AVBERT's per-modality BOS "summary" token.
- Pretraining: the paper's MEP + CPP with content-aware negative sampling is the task ``av_pretrain``
  (harness/tasks/av_pretrain.py, which states its own differences); it uses :meth:`LowRank.encode_tokens`
  (harness.api.TokenSequences) on masked and re-paired clip embeddings. The code releases no pretraining.
- Q_k: the paper writes W = U Σ_k V_kᵀ; the code makes the private middle factor an orthogonal O×O matrix (expRNN,
  static mode: Q = expm(A - Aᵀ), Cayley-initialised) and L2-normalises V_kᵀx over its O entries. Here Q_k is
  ``torch.nn.utils.parametrizations.orthogonal`` with ``orthogonal_map`` (default ``matrix_exp``: Q = B·expm(A - Aᵀ)
  with a fixed orthogonal base B, a random orthogonal Q at init); ``l2_normalize`` follows the code (default on). The L2
  normalisation is code behaviour; the paper's notation beyond U Σ Vᵀ was not checked against its text
  (``docs/methods.md``).
- Private groups: the code gives every factor linear 3 groups in mid fusion even in encoders that use only one
  (dead parameters without cross-modal sharing); here a layer holds the groups that run through it.
- Layers: post-LN BERT layers (code; ``pre_norm`` for pre-LN), GELU (exact erf, the code's ``gelu``), shared
  LayerNorms with the code's eps 1e-12 (``layer_norm_eps``; the harness's ViTs use 1e-6); attention by SDPA with the
  harness's key-padding masks. BERT's embedding LayerNorm opens every encoder; the multimodal stream adds a
  token-type embedding (video 0, audio 1) and, as the code's ``multi_embeddings``, its own positional table indexed
  by the position within each modality (``position_ids`` = [0..Nv, 0..Na], CLS = 0; ``multimodal_positions``). The
  unimodal encoders' tables are the harness tokenisers' (the code gives each its own ``BertEmbeddings``).
- Dropout 0.1 in the code; 0 by default here, as in the harness's other methods. Stochastic depth per position.
- Read-out: the code's Kinetics-Sounds head concatenates BOS and per-clip outputs of the multimodal stream; here
  ``cls`` = each modality's CLS from the last encoder it passes (multimodal in early/mid, its own in late) and
  ``gap`` = mean of present patch tokens, scored by the task's shared head (harness/api/method.py).

Update rule (Layer_e,l: the layer of encoder e at depth l; ``sharing`` decides which of them are one module):
    z_m <- Layer_m,l(z_m; group m)      l = 0..Lu-1, m in {video, audio}      (unimodal; skipped in early fusion)
    z = LN([z_video ‖ z_audio] + type)                                         (multimodal; skipped in late fusion)
    z <- Layer_mm,l(z; group mm)         l = 0..Lm-1
Every linear map inside Layer (Q, K, V, attention output, FFN in, FFN out), for group k:
    y = U·Q_k·normalize(V_kᵀ x) + b      U ∈ R^{M×r}, b shared; V_kᵀ ∈ R^{r×N}, Q_k ∈ O(r) private; rank=None: W x + b

Shapes: ``B`` batch, ``Nv`` / ``Na`` video / audio tokens, ``D`` width, ``Dh`` head width, ``r`` rank,
``Lu`` / ``Lm`` unimodal / multimodal layers.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from timm.layers import drop_path
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import orthogonal

from harness.api import (
    FusionMethod,
    InputSpec,
    MethodConfig,
    TokenLayout,
    attn_mask,
    complete,
    keep_keys,
    present_masks,
    token_outputs,
)
from harness.models.backbones import BackboneConfig, drop_path_rate
from harness.models.blocks import Readout, Tokenizers, readout_cls, readout_field, readout_gap, vit_token_layout

Sharing = Literal["none", "layers", "modalities", "all"]
INIT_STD = {"code": 0.01, "bert": 0.02}  # normal inits: AVBERT's init_weights(FC_INIT_STD); BERT's uncalled one
ORDER = ("video", "audio")  # the multimodal sequence is [video ‖ audio], token types 0 / 1, as AVBERT's


class LowRankConfig(MethodConfig):
    """Fusion stage, sharing scheme and rank of the factorised linear maps."""

    families: ClassVar[tuple[str, ...]] = ("vit", "cnn")  # cnn: AVBERT's per-clip CNN embeddings (its own inputs)

    fusion: Literal["early", "mid", "late"] = Field(
        "mid",
        description="early: multimodal encoder only; mid: unimodal encoders, then the multimodal one (AVBERT); "
        "late: unimodal encoders only",
    )
    unimodal_layers: int | None = Field(
        None, ge=0, description="Lu, layers per unimodal encoder; null = backbone depth // 2 (mid), depth (late), 0"
    )
    multimodal_layers: int | None = Field(
        None, ge=0, description="Lm, multimodal layers; null = depth - depth // 2 (mid), depth (early), 0 (late)"
    )
    sharing: Sharing = Field(
        "all",
        description="none: every layer its own; layers: one layer per encoder reused at every depth (ALBERT); "
        "modalities: the encoders are one stack; all: one layer for every depth and encoder (AVBERT's default)",
    )
    rank: int | None = Field(
        16, ge=1, description="r of U·Q_k·V_kᵀ (AVBERT: 128 of 768); null = plain full-rank linear maps, no factors"
    )
    orthogonal_map: Literal["matrix_exp", "cayley"] = Field(
        "matrix_exp", description="torch orthogonal parametrisation of Q_k (expRNN's static expm ~ matrix_exp)"
    )
    l2_normalize: bool = Field(True, description="L2-normalise V_kᵀx over its r entries before Q_k (AVBERT code)")
    pre_norm: bool = Field(False, description="pre-LN layers + a final LayerNorm; False = post-LN BERT (AVBERT)")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout on attention and layer outputs (code: 0.1)")
    init: Literal["matched", "xavier", "code", "bert"] = Field(
        "matched",
        description="matched: xavier-uniform V_k and U, U rescaled so that the whole map's output has the variance of "
        "a xavier full-rank N->M map (the paper is silent); xavier: xavier-uniform U and V_k each, as every other "
        "method's ViT blocks (MBT/JAX init); code: normal(0, 0.01) for every linear map and embedding table, what the "
        "AVBERT code runs (init_weights(model, FC_INIT_STD)); bert: normal(0, 0.02), BERT's _init_weights, which the "
        "AVBERT code defines but never calls",
    )
    layer_norm_eps: float = Field(1e-12, gt=0, description="eps of every LayerNorm (AVBERT code: 1e-12; ViT: 1e-6)")
    multimodal_positions: bool = Field(
        True,
        description="a positional table of the multimodal stream, indexed by the position within each modality "
        "(the code's multi_embeddings); False: only the tokenisers' tables (the harness before)",
    )
    factor_lr_scale: float = Field(
        1 / 3,
        gt=0,
        description="multiplies the Adam(W) step of U, V_k and Q_k's generator (each factor is stored divided by it); "
        "1 = one learning rate for everything (the code); 1/3 (default): the three factors together move the map "
        "about as far per step as one matrix at the harness's lr (docs/methods.md)",
    )
    readout: Readout = readout_field()

    def layers(self, depth: int) -> tuple[int, int]:
        """(Lu, Lm) after the defaults: a split of the backbone depth that fits the fusion stage."""
        split = {"early": (0, depth), "mid": (depth // 2, depth - depth // 2), "late": (depth, 0)}[self.fusion]
        lu = split[0] if self.unimodal_layers is None else self.unimodal_layers
        lm = split[1] if self.multimodal_layers is None else self.multimodal_layers
        return lu, lm

    def check(self, backbone: BackboneConfig) -> list[tuple[str, str]]:
        errors = []
        lu, lm = self.layers(backbone.depth)
        need = {"early": (lu == 0, lm > 0), "mid": (lu > 0, lm > 0), "late": (lu > 0, lm == 0)}[self.fusion]
        rule = {"early": "Lu = 0, Lm >= 1", "mid": "Lu >= 1, Lm >= 1", "late": "Lu >= 1, Lm = 0"}[self.fusion]
        for key, value, ok in (("unimodal_layers", lu, need[0]), ("multimodal_layers", lm, need[1])):
            if not ok:
                errors.append((f"method.{key}", f"{value} does not fit fusion={self.fusion} ({rule})"))
        if self.rank is not None and self.rank > backbone.embed_dim:
            errors.append(
                (
                    "method.rank",
                    f"{self.rank} exceeds the width D={backbone.embed_dim}: not low-rank (use <= D or null)",
                )
            )
        return errors


class StepScale(nn.Module):
    """Parametrisation X = c·X̃ storing X̃ = X / c. Adam's step on X̃ is lr-sized whatever X̃'s scale, so X moves c·lr
    per step: a per-tensor learning-rate factor that the harness's one optimiser needs no knowledge of. Unlike a
    param-group lr, AdamW's decoupled decay (relative) is not scaled, and X̃'s gradient is c times X's, so it weighs
    c times as much in the global-norm clipping. Under plain SGD the step would scale by c², not c."""

    def __init__(self, c: float):
        super().__init__()
        self.c = c

    def forward(self, x: Tensor) -> Tensor:
        return x * self.c

    def right_inverse(self, x: Tensor) -> Tensor:
        return x / self.c


def scale_step(module: nn.Module, name: str, c: float) -> None:
    """Make Adam move ``module.<name>`` c times as far per step (no-op for c = 1: plain parameter, same state dict)."""
    if c != 1:
        parametrize.register_parametrization(module, name, StepScale(c))


def orthogonal_square(r: int, orthogonal_map: str, step: float = 1.0) -> nn.Linear:
    """A bias-free r×r linear map kept orthogonal by torch's parametrisation (``.weight`` is Q, ``original`` A).

    ``step`` scales the optimiser's step on A (:class:`StepScale` on the parametrisation's ``original``).
    ``orthogonal()`` checks the initial matrix with a data-dependent comparison that the meta device cannot run,
    so under ``torch.device("meta")`` (``harness profile``) it is built on the CPU (r² floats) and moved.
    """
    meta = torch.empty(0).device.type == "meta"
    with torch.device("cpu") if meta else nullcontext():
        q = orthogonal(nn.Linear(r, r, bias=False), orthogonal_map=orthogonal_map)
        scale_step(q.parametrizations.weight, "original", step)
    trivialization = q.parametrizations.weight[0]
    trivialization.base = trivialization.base.contiguous()  # a transposed QR factor; safetensors wants contiguous
    return q.to("meta") if meta else q


def matched_gain(n: int, m: int, r: int, l2_normalize: bool) -> float:
    """Xavier gain of U (M×r) that gives y = U·Q·V̂ᵀx (V xavier, Q orthogonal) the output variance of a xavier N->M
    matrix, 2N/(N+M), for inputs of unit variance per entry.

    l2 on: ‖normalize(Vᵀx)‖ = 1, so Var(y_i) = Var(U) and Var(U) = 2N/(N+M). l2 off: Var(y_i) = r·Var(U)·N·Var(V)
    with Var(V) = 2/(N+r), so Var(U) = (N+r)/(r(N+M)). xavier_uniform(gain g) draws Var(U) = g²·2/(M+r).
    """
    var_u = 2 * n / (n + m) if l2_normalize else (n + r) / (r * (n + m))
    return (var_u * (m + r) / 2) ** 0.5


class FactorLinear(nn.Module):
    """y = U·Q_k·normalize(V_kᵀ x) + b for group k (AVBERT's ``FactorLinear``); ``rank=None``: y = W x + b.

    Args:
        d_in: N, input width.
        d_out: M, output width.
        groups: the modality groups k that use this map (each gets its own V_k and Q_k).
        rank: r, or None for one plain linear map shared by the groups.
        orthogonal_map: torch's parametrisation of Q_k.
        l2_normalize: normalise V_kᵀ x before Q_k.
        init: ``matched``, ``xavier`` or ``bert`` (:class:`LowRankConfig`).
        factor_lr_scale: Adam step factor of U, V_k and Q_k's generator (:class:`StepScale`); ignored at full rank.
    """

    def __init__(self, d_in, d_out, groups: tuple[str, ...], rank, orthogonal_map: str, l2_normalize: bool,
                 init: str = "xavier", factor_lr_scale: float = 1.0):  # fmt: skip
        super().__init__()
        self.l2_normalize = l2_normalize
        self.shared = nn.Linear(d_in if rank is None else rank, d_out)  # U and b (or W and b)
        self.down = self.mix = None
        step = 1.0 if rank is None else factor_lr_scale
        if rank is not None:
            self.down = nn.ModuleDict({k: nn.Linear(d_in, rank, bias=False) for k in groups})  # V_kᵀ
            self.mix = nn.ModuleDict({k: orthogonal_square(rank, orthogonal_map, step) for k in groups})  # Q_k
        for lin in [self.shared, *(self.down.values() if self.down is not None else ())]:
            if init in INIT_STD:
                nn.init.normal_(lin.weight, std=INIT_STD[init])
            else:
                nn.init.xavier_uniform_(lin.weight)  # timm's init_weights_vit_jax, as the other methods' blocks
        if init == "matched" and rank is not None:
            nn.init.xavier_uniform_(self.shared.weight, gain=matched_gain(d_in, d_out, rank, l2_normalize))
        nn.init.zeros_(self.shared.bias)
        for lin in [self.shared, *(self.down.values() if self.down is not None else ())]:
            scale_step(lin, "weight", step)  # after the init: the stored tensor is the initial factor / step

    def forward(self, x: Tensor, group: str) -> Tensor:
        if self.down is None:
            return self.shared(x)
        h = self.down[group](x)  # (..., r)
        if self.l2_normalize:
            h = F.normalize(h, dim=-1)
        return self.shared(self.mix[group](h))  # (..., r) -> (..., M)


class FactorLayer(nn.Module):
    """A BERT layer (post-LN by default) whose six linear maps are :class:`FactorLinear`; LayerNorms are shared."""

    def __init__(self, backbone: BackboneConfig, cfg: LowRankConfig, groups: tuple[str, ...]):
        super().__init__()
        d, hidden = backbone.embed_dim, int(backbone.embed_dim * backbone.mlp_ratio)
        self.heads, self.pre_norm, self.dropout = backbone.num_heads, cfg.pre_norm, cfg.dropout
        make = lambda n, m: FactorLinear(  # noqa: E731
            n, m, groups, cfg.rank, cfg.orthogonal_map, cfg.l2_normalize, cfg.init, cfg.factor_lr_scale
        )
        self.q, self.k, self.v, self.out = make(d, d), make(d, d), make(d, d), make(d, d)
        self.ffn_in, self.ffn_out = make(d, hidden), make(hidden, d)
        self.norm1, self.norm2 = nn.LayerNorm(d, eps=cfg.layer_norm_eps), nn.LayerNorm(d, eps=cfg.layer_norm_eps)

    def forward(self, x: Tensor, group: str, mask: Tensor | None, p_drop_path: float = 0.0) -> Tensor:
        b, n, d = x.shape
        drop = lambda y: drop_path(F.dropout(y, self.dropout, self.training), p_drop_path, self.training)  # noqa: E731
        h = self.norm1(x) if self.pre_norm else x
        q, k, v = (f(h, group).view(b, n, self.heads, -1).transpose(1, 2) for f in (self.q, self.k, self.v))
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0)
        a = self.out(a.transpose(1, 2).reshape(b, n, d), group)  # (B, H, N, Dh) -> (B, N, D)
        x = x + drop(a) if self.pre_norm else self.norm1(x + drop(a))
        h = self.norm2(x) if self.pre_norm else x
        f = self.ffn_out(F.gelu(self.ffn_in(h, group)), group)  # (B, N, D)
        return x + drop(f) if self.pre_norm else self.norm2(x + drop(f))


class Encoders(nn.Module):
    """Every transformer layer of the method, stored once per sharing unit (the paper's "Transformer" count).

    ``stacks[unit][i]``: unit is the encoder's name, or "shared" when modalities share; i is the depth, or 0 when
    layers share. Encoders: "video", "audio" (Lu layers each) and "multimodal" (Lm layers).
    """

    def __init__(self, backbone: BackboneConfig, cfg: LowRankConfig, depths: dict[str, int]):
        super().__init__()
        self.depths = {e: n for e, n in depths.items() if n > 0}
        self.share_layers = cfg.sharing in ("layers", "all")
        self.share_modalities = cfg.sharing in ("modalities", "all")
        units = {"shared": tuple(self.depths)} if self.share_modalities else {e: (e,) for e in self.depths}
        self.stacks = nn.ModuleDict()
        for unit, encoders in units.items():
            n = 1 if self.share_layers else max(self.depths[e] for e in encoders)
            # Layer i holds the private factors of the encoders that reach depth i (no dead parameters).
            groups = [tuple(e for e in encoders if self.share_layers or self.depths[e] > i) for i in range(n)]
            self.stacks[unit] = nn.ModuleList(FactorLayer(backbone, cfg, g) for g in groups)

    def forward(self, encoder: str, x: Tensor, mask: Tensor | None, p_drop_path: list[float]) -> Tensor:
        """Runs ``encoder``'s layers over x (B, N, D) with the key mask (B, 1, 1, N) (None: every key present)."""
        stack = self.stacks["shared" if self.share_modalities else encoder]
        for i in range(self.depths.get(encoder, 0)):
            x = stack[0 if self.share_layers else i](x, encoder, mask, p_drop_path[i])
        return x


class LowRank(FusionMethod):
    """Unimodal encoders, then a multimodal encoder over [video ‖ audio], all of factorised shared layers."""

    Config = LowRankConfig
    token_outputs = True
    contract_variants = (
        {"fusion": "early"},
        {"fusion": "late", "readout": "gap"},
        {"sharing": "none"},
        {"sharing": "layers", "unimodal_layers": 2, "multimodal_layers": 1},
        {"sharing": "modalities"},
        {"rank": None, "sharing": "none"},
        {"rank": 4, "pre_norm": True, "orthogonal_map": "cayley", "l2_normalize": False, "dropout": 0.1},
        {"init": "xavier", "factor_lr_scale": 1.0},  # plain parameters (no StepScale), as before the matched defaults
        {"init": "bert", "factor_lr_scale": 2.0, "sharing": "none"},
        {"init": "code", "factor_lr_scale": 1.0, "multimodal_positions": False, "layer_norm_eps": 1e-6},
    )

    def __init__(self, cfg: LowRankConfig, backbone: BackboneConfig, spec: InputSpec):
        super().__init__(cfg, backbone, spec)
        errors = cfg.check(backbone)
        if errors:
            raise ValueError("; ".join(f"{k}: {m}" for k, m in errors))
        d = backbone.embed_dim
        self.lu, self.lm = cfg.layers(backbone.depth)
        self.tokens = Tokenizers(backbone, spec, ORDER)
        self.encoders = Encoders(backbone, cfg, {"video": self.lu, "audio": self.lu, "multimodal": self.lm})
        eps = cfg.layer_norm_eps
        # BERT's embedding LayerNorm opens every encoder; token types and (the code's multi_embeddings) a positional
        # table indexed by the position within each modality only in the multimodal stream.
        self.embed_norm = nn.ModuleDict({e: nn.LayerNorm(d, eps=eps) for e in self.encoders.depths})
        self.token_type = nn.Parameter(torch.empty(len(ORDER), d)) if self.lm else None
        n_pos = max(self.tokens.pos[m].shape[1] for m in ORDER) + 1  # + the CLS (AVBERT's BOS) at position 0
        self.mm_pos = nn.Parameter(torch.empty(1, n_pos, d)) if self.lm and cfg.multimodal_positions else None
        for table in (self.token_type, self.mm_pos):
            if table is not None and cfg.init == "code":
                nn.init.normal_(table, std=INIT_STD["code"])  # nn.Embedding under init_weights(FC_INIT_STD)
            elif table is not None:
                nn.init.trunc_normal_(table, std=0.02)
        if cfg.init == "code":
            for table in self.tokens.pos.values():  # the unimodal encoders' positional tables, likewise
                nn.init.normal_(table, std=INIT_STD["code"])
        self.norm = nn.LayerNorm(d, eps=eps) if cfg.pre_norm else nn.Identity()

    def forward(self, batch: dict) -> dict:
        present, full = present_masks(batch, ORDER), complete(batch, ORDER)
        embedded = self.tokens.embed(batch, present, full)  # m -> (B, N_m, D): patches, or one CNN embedding per clip
        streams = self.encode_tokens(embedded, present, full)
        z = streams["multimodal"] or streams["unimodal"]
        out = readout_cls(z, present) if self.cfg.readout == "cls" else readout_gap(z, present)
        # tokens: the final sequences (harness.api.token_outputs); front_tokens: the front ends' outputs, what a
        # harness.api.TokenSequences task (av_pretrain) re-encodes
        return {**out, "tokens": token_outputs(z, present, self.token_layout()), "front_tokens": embedded}

    def encode_tokens(self, tokens: dict[str, Tensor], present: dict[str, Tensor],
                      full: bool = False) -> dict[str, dict[str, Tensor]]:  # fmt: skip
        """The encoders over front-end embeddings (harness.api.TokenSequences); the last stream ends in the norm.
        ``full``: every clip has every modality (no key masks)."""
        z = self.tokens.assemble(tokens)  # m -> (B, 1 + N_m, D)
        rates = [drop_path_rate(self.backbone, i) for i in range(self.lu + self.lm)]
        streams: dict[str, dict[str, Tensor]] = {"unimodal": {}, "multimodal": {}}
        with parametrize.cached():  # each Q_k computed once per forward, however many layers share it
            if self.lu:
                for m in ORDER:
                    mask = None if full else attn_mask(keep_keys(present[m], z[m].shape[1] - 1))  # (B, 1, 1, 1 + N_m)
                    z[m] = self.encoders(m, self.embed_norm[m](z[m]), mask, rates[: self.lu])
                streams["unimodal"] = dict(z)
            if self.lm:
                # A CLS is a key only when its modality is present; with neither present both stay keys.
                mask = None  # every key present
                if not full:
                    none = ~(present["video"] | present["audio"])  # (B,)
                    keep = [keep_keys(present[m], z[m].shape[1] - 1, keep_cls=present[m] | none) for m in ORDER]
                    mask = attn_mask(torch.cat(keep, dim=1))  # (B, 1, 1, 2 + Nv + Na)
                sizes = [z[m].shape[1] for m in ORDER]
                pos = {m: 0 if self.mm_pos is None else self.mm_pos[:, : z[m].shape[1]] for m in ORDER}  # ids 0..N_m
                joint = torch.cat([z[m] + pos[m] + self.token_type[i] for i, m in enumerate(ORDER)], dim=1)  # (B, N, D)
                joint = self.embed_norm["multimodal"](joint)
                joint = self.encoders("multimodal", joint, mask, rates[self.lu :])
                streams["multimodal"] = dict(zip(ORDER, joint.split(sizes, dim=1)))  # m -> (B, 1 + N_m, D)
        last = "multimodal" if self.lm else "unimodal"
        streams[last] = {m: self.norm(x) for m, x in streams[last].items()}
        return streams

    def token_layout(self) -> TokenLayout:
        if self.backbone.family == "cnn":  # one token per short clip in each modality (harness/models/cnn.py)
            k, d = self.spec.clips, self.backbone.embed_dim
            return TokenLayout(video=(k, 1, 1, d), audio=(k, d), audio_time=tuple(range(k)), audio_steps=k)
        return vit_token_layout(self.backbone, self.spec, ORDER)
