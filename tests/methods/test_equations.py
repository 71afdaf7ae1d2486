"""The methods against their update rules (MBT: scenic ``mbt/model.py``; LAVISH, AVISH: ``net_trans.py``) and each
other."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from harness.models.backbones import num_audio_tokens, num_video_tokens
from harness.models.complexity import count_params, forward_flops
from harness.tasks.classification import ClassificationTask
from methods.avish import AVISH, AVISHConfig
from methods.cross import Cross
from methods.late import Late
from methods.lavish import LAVISH, LAVISHConfig
from methods.mbt import MBT
from methods.parts.lavish_adapter import GroupedLinear, LAVISHAdapter
from methods.vanilla import Vanilla, VanillaConfig


def build(cls, backbone, spec, seed: int = 0, **fields):
    torch.manual_seed(seed)
    return cls.build(cls.Config(**fields), backbone, spec)


def assert_same(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def with_new_video(batch: dict) -> dict:
    return dict(batch, video=torch.randn_like(batch["video"]))


def mbt_reference(model: MBT, batch: dict, modalities: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """The paper's rule written out with the model's own modules, no masks: only ``modalities`` exist."""
    depth, lf = model.backbone.depth, model.cfg.fusion_layer
    everywhere = {m: torch.ones(batch[m].shape[0], dtype=torch.bool) for m in model.modalities}
    z = {m: x for m, x in model.tokens(batch, everywhere).items() if m in modalities}
    for layer in range(lf):
        z = {m: model.streams.block(layer, m)(x) for m, x in z.items()}
    b = model.bottleneck.expand(batch["audio"].shape[0], -1, -1)
    nb = b.shape[1]
    for layer in range(lf, depth):
        b_m = []
        for m in modalities:
            y = model.streams.block(layer, m)(torch.cat([z[m], b], dim=1))  # [z_m' ‖ b_m'] = Block_m([z_m ‖ b])
            z[m] = y[:, :-nb]
            b_m.append(y[:, -nb:])
        b = torch.stack(b_m).mean(0)  # b <- mean_m b_m'
    return {m: model.norm(x)[:, 0] for m, x in z.items()}


def test_mbt_follows_the_bottleneck_update_rule(backbone, spec, make_batch):
    model = build(MBT, backbone, spec, fusion_layer=1, bottleneck_tokens=3).eval()
    batch = make_batch(spec, [True] * 2, [True] * 2)
    out = model(batch)
    for m, expected in mbt_reference(model, batch, ("audio", "video")).items():
        assert_same(out["per_modality"][m], expected)
    assert_same(out["embedding"], (out["per_modality"]["audio"] + out["per_modality"]["video"]) / 2)


def test_mbt_bottleneck_averages_present_modalities_only(backbone, spec, make_batch):
    model = build(MBT, backbone, spec, fusion_layer=0).eval()
    batch = make_batch(spec, [True, True], [True, False])
    out = model(batch)
    audio_alone = {k: v[1:] for k, v in batch.items() if torch.is_tensor(v)}
    expected = mbt_reference(model, audio_alone, ("audio",))["audio"]
    assert_same(out["per_modality"]["audio"][1:], expected)
    assert_same(out["embedding"][1:], expected)


def test_mbt_at_depth_is_late_fusion(backbone, spec, make_batch):
    mbt = build(MBT, backbone, spec, fusion_layer=backbone.depth).eval()
    late = build(Late, backbone, spec, seed=1).eval()
    late.load_state_dict(mbt.state_dict(), strict=True)
    batch = make_batch(spec, [True, True, False], [True, False, True])
    a, b = mbt(batch), late(batch)
    assert_same(a["embedding"], b["embedding"])
    for m in ("audio", "video"):
        assert_same(a["per_modality"][m], b["per_modality"][m])


def test_mbt_test_without_bottlenecks_is_late_fusion_in_eval_only(backbone, spec, make_batch):
    mbt = build(MBT, backbone, spec, fusion_layer=1, test_with_bottlenecks=False)
    late = build(Late, backbone, spec, seed=1)
    state = {k: v for k, v in mbt.state_dict().items() if k != "bottleneck"}
    late.load_state_dict(state, strict=True)
    batch = make_batch(spec, [True] * 2, [True] * 2)
    assert_same(mbt.eval()(batch)["embedding"], late.eval()(batch)["embedding"])
    assert not torch.allclose(mbt.train()(batch)["embedding"], late.train()(batch)["embedding"])


def test_mbt_exchanges_only_through_two_or_more_fusion_layers(backbone, spec, make_batch):
    # A bottleneck written at layer l is read at layer l + 1, so Lf = L - 1 carries nothing to the streams.
    batch = make_batch(spec, [True] * 2, [True] * 2)
    depth = backbone.depth
    for lf, crosses in ((0, True), (depth - 2, True), (depth - 1, False), (depth, False)):
        model = build(MBT, backbone, spec, fusion_layer=lf, bottleneck_tokens=1).eval()
        audio, audio_new = (model(x)["per_modality"]["audio"] for x in (batch, with_new_video(batch)))
        assert torch.allclose(audio, audio_new, rtol=0, atol=1e-6) != crosses, f"fusion_layer={lf}"


def test_vanilla_early_fusion_attends_across_and_late_does_not(backbone, spec, make_batch):
    batch = make_batch(spec, [True] * 2, [True] * 2)
    for lf, crosses in ((0, True), (backbone.depth, False)):
        model = build(Vanilla, backbone, spec, fusion_layer=lf).eval()
        audio, audio_new = (model(x)["per_modality"]["audio"] for x in (batch, with_new_video(batch)))
        assert torch.allclose(audio, audio_new, rtol=0, atol=1e-6) != crosses, f"fusion_layer={lf}"


def test_vanilla_missing_video_is_audio_alone(backbone, spec, make_batch):
    # With video's keys masked, the joint sequence must give the audio tokens exactly the audio-only computation,
    # which is vanilla at Lf = L with the same (shared) weights.
    early = build(Vanilla, backbone, spec, fusion_layer=0).eval()
    alone = build(Vanilla, backbone, spec, seed=1, fusion_layer=backbone.depth).eval()
    alone.load_state_dict(early.state_dict(), strict=True)
    batch = make_batch(spec, [True, True], [True, False])
    out, ref = early(batch), alone(batch)
    assert_same(out["per_modality"]["audio"][1], ref["per_modality"]["audio"][1])
    assert_same(out["embedding"][1], ref["per_modality"]["audio"][1])
    assert not torch.allclose(out["per_modality"]["audio"][0], ref["per_modality"]["audio"][0])


def test_vanilla_at_depth_is_shared_weight_late_fusion(backbone, spec, make_batch):
    vanilla = build(Vanilla, backbone, spec, fusion_layer=backbone.depth).eval()
    mbt = build(MBT, backbone, spec, seed=1, fusion_layer=backbone.depth, shared_weights=True).eval()
    mbt.load_state_dict(vanilla.state_dict(), strict=True)
    batch = make_batch(spec, [True] * 2, [True] * 2)
    assert_same(vanilla(batch)["embedding"], mbt(batch)["embedding"])


@pytest.mark.parametrize("readout", ["gap", "gap_cls"])
def test_gap_pools_present_patch_tokens(readout, backbone, spec, make_batch):
    model = build(Vanilla, backbone, spec, fusion_layer=backbone.depth, readout=readout).eval()
    batch = make_batch(spec, [True, True], [True, False])
    z = model.tokens(batch, {m: torch.ones(2, dtype=torch.bool) for m in ("audio", "video")})
    z = {m: model.norm(model.streams(z, {m: None for m in z}, range(backbone.depth))[m]) for m in z}
    first = int(readout == "gap_cls")  # gap: no CLS token at all; gap_cls: the CLS is not pooled
    both = torch.cat([z["video"][0, first:], z["audio"][0, first:]]).mean(0)  # pooled by token count
    assert_same(model(batch)["embedding"][0], both)
    assert_same(model(batch)["embedding"][1], z["audio"][1, first:].mean(0))


def scenic_gap(model, batch: dict) -> torch.Tensor:
    """scenic ``mbt/model.py`` with ``classifier='gap'`` written out with the model's own modules: no CLS token in
    ``MBT.__call__``, ``Encoder.__call__``'s three rules (bottlenecks; ``share_encoder=False`` get_context /
    combine_context; ``share_encoder=True`` one joint sequence), ``encoder_norm`` over [rgb ‖ spectrogram], mean."""
    depth, lf = model.backbone.depth, model.cfg.fusion_layer
    z = model.tokens(batch, {m: torch.ones(batch[m].shape[0], dtype=torch.bool) for m in model.modalities})
    assert all(x.shape[1] == n for x, n in zip(z.values(), (model.tokens.pos[m].shape[1] for m in z)))  # no CLS
    for layer in range(lf):
        z = {m: model.streams.block(layer, m)(x) for m, x in z.items()}
    if isinstance(model, MBT):
        b = model.bottleneck.expand(batch["audio"].shape[0], -1, -1)  # n_bottlenecks, no +1 without 'token'
        for layer in range(lf, depth):
            outs = {m: model.streams.block(layer, m)(torch.cat([x, b], dim=1)) for m, x in z.items()}
            z = {m: y[:, : z[m].shape[1]] for m, y in outs.items()}
            b = torch.stack([y[:, -b.shape[1] :] for y in outs.values()], dim=-1).mean(-1)
    elif isinstance(model, Cross):
        for layer in range(lf, depth):
            other = {"audio": "video", "video": "audio"}
            z = {m: model.streams.block(layer, m)(torch.cat([z[other[m]], x], dim=1))[:, -x.shape[1] :]
                 for m, x in z.items()}  # fmt: skip
    else:  # vanilla: x_combined = [rgb ‖ spectrogram] through the shared blocks
        x = torch.cat([z["video"], z["audio"]], dim=1)
        for layer in range(lf, depth):
            x = model.streams.block(layer)(x)
        z = {"video": x}
    return model.norm(torch.cat([z[m] for m in ("video", "audio") if m in z], dim=1)).mean(1)  # gap: jnp.mean


@pytest.mark.parametrize("cls,fields", [(Vanilla, {"fusion_layer": 1}), (Vanilla, {"fusion_layer": 0}),
                                        (MBT, {"fusion_layer": 1}), (MBT, {"fusion_layer": 0, "shared_weights": True}),
                                        (Cross, {"fusion_layer": 1})])  # fmt: skip
def test_gap_is_scenics_gap_model_without_cls_tokens(cls, fields, backbone, spec, make_batch):
    model = build(cls, backbone, spec, readout="gap", **fields).eval()
    assert len(model.tokens.cls) == 0  # no CLS parameter at all
    batch = make_batch(spec, [True] * 3, [True] * 3)
    assert_same(model(batch)["embedding"], scenic_gap(model, batch))
    # the former read-out (gap_cls) keeps CLS tokens as keys: another function of the same patch weights
    old = build(cls, backbone, spec, readout="gap_cls", **fields).eval()
    old.load_state_dict(model.state_dict(), strict=False)
    assert not torch.allclose(old(batch)["embedding"], model(batch)["embedding"], atol=1e-3)


def cross_reference(model: Cross, batch: dict) -> dict[str, torch.Tensor]:
    """§1.4 (2) written out with the model's own modules, no masks: z_m <- last |z_m| of Block_m([z_other ‖ z_m])."""
    depth, lf = model.backbone.depth, model.cfg.fusion_layer
    z = model.tokens(batch, {m: torch.ones(batch[m].shape[0], dtype=torch.bool) for m in model.modalities})
    for layer in range(lf):
        z = {m: model.streams.block(layer, m)(x) for m, x in z.items()}
    for layer in range(lf, depth):
        audio = model.streams.block(layer, "audio")(torch.cat([z["video"], z["audio"]], dim=1))
        video = model.streams.block(layer, "video")(torch.cat([z["audio"], z["video"]], dim=1))
        z = {"audio": audio[:, -z["audio"].shape[1] :], "video": video[:, -z["video"].shape[1] :]}  # simultaneous
    return {m: model.norm(x)[:, 0] for m, x in z.items()}


def test_cross_follows_the_modality_specific_update_rule(backbone, spec, make_batch):
    model = build(Cross, backbone, spec, fusion_layer=1).eval()
    batch = make_batch(spec, [True] * 2, [True] * 2)
    out = model(batch)
    for m, expected in cross_reference(model, batch).items():
        assert_same(out["per_modality"][m], expected)


def test_cross_streams_meet_only_from_the_fusion_layer(backbone, spec, make_batch):
    # Unlike MBT, the exchange is immediate: at Lf = L - 1 the last layer already reads the other modality.
    batch = make_batch(spec, [True] * 2, [True] * 2)
    depth = backbone.depth
    for lf, crosses in ((0, True), (depth - 1, True), (depth, False)):
        model = build(Cross, backbone, spec, fusion_layer=lf).eval()
        audio, audio_new = (model(x)["per_modality"]["audio"] for x in (batch, with_new_video(batch)))
        assert torch.allclose(audio, audio_new, rtol=0, atol=1e-6) != crosses, f"fusion_layer={lf}"


@pytest.mark.parametrize("fusion_layer", [0, "depth"])
def test_cross_is_late_fusion_at_depth_or_without_the_other_modality(fusion_layer, backbone, spec, make_batch):
    # Lf = L: no cross-modal attention at all. Lf = 0: a clip whose other modality is absent sees no key of it.
    lf = backbone.depth if fusion_layer == "depth" else fusion_layer
    cross = build(Cross, backbone, spec, fusion_layer=lf).eval()
    late = build(Late, backbone, spec, seed=1).eval()
    late.load_state_dict(cross.state_dict(), strict=True)
    batch = make_batch(spec, [True, True, False], [True, False, True])
    a, b = cross(batch), late(batch)
    # Clip 1 has audio only, clip 2 video only; at Lf = L every stream of every clip matches late fusion.
    alone = {"audio": [1], "video": [2]} if lf < backbone.depth else {"audio": [0, 1, 2], "video": [0, 1, 2]}
    assert_same(a["embedding"][1:], b["embedding"][1:])
    for m, clips in alone.items():
        assert_same(a["per_modality"][m][clips], b["per_modality"][m][clips])
    assert torch.allclose(a["embedding"][0], b["embedding"][0]) == (lf == backbone.depth)


def test_cross_with_one_block_for_both_modalities_is_vanilla(backbone, spec, make_batch):
    # Attention is permutation-equivariant, so [z_other ‖ z_m] through the shared block gives z_m's rows of the
    # joint sequence: scenic's share_encoder=True without bottlenecks is vanilla fusion.
    vanilla = build(Vanilla, backbone, spec, fusion_layer=1).eval()
    cross = build(Cross, backbone, spec, seed=1, fusion_layer=1).eval()
    state = {}
    for key, value in vanilla.state_dict().items():
        for m in ("audio", "video"):
            state[key.replace("streams.blocks.shared.", f"streams.blocks.{m}.")] = value
    cross.load_state_dict(state, strict=True)
    both = make_batch(spec, [True] * 2, [True] * 2)
    a, b = cross(both), vanilla(both)
    for m in ("audio", "video"):
        torch.testing.assert_close(a["per_modality"][m], b["per_modality"][m], rtol=0, atol=1e-5)
    # With one modality absent, only the absent stream's own CLS differs (a key in cross, not in vanilla's joint
    # sequence), and it never reaches the embedding.
    mixed = make_batch(spec, [True, False], [False, True])
    torch.testing.assert_close(cross(mixed)["embedding"], vanilla(mixed)["embedding"], rtol=0, atol=1e-5)


def test_vanilla_with_separate_weights_points_to_cross(backbone, spec):
    cfg = VanillaConfig(shared_weights=False)
    assert cfg.check(backbone) == [("method.shared_weights", cfg.check(backbone)[0][1])]
    assert "method.name=cross" in cfg.check(backbone)[0][1]
    assert VanillaConfig().check(backbone) == []
    with pytest.raises(ValueError, match="method.shared_weights=False"):
        Vanilla(cfg, backbone, spec)


# LAVISH / AVISH (GenjiB/LAVISH ``AVE/nets/net_trans.py``, ``VisualAdapter``)
def lavish_reference_alone(model: LAVISH, batch: dict) -> dict[str, torch.Tensor]:
    """The frozen backbone run on each modality alone (timm's own Block.forward, no adapters, no masks)."""
    z = model.tokens(batch, {m: torch.ones(batch[m].shape[0], dtype=torch.bool) for m in model.modalities})
    for blk in model.blocks:
        z = {m: blk(x) for m, x in z.items()}
    return {m: model.norm(x)[:, 0] for m, x in z.items()}


@pytest.mark.parametrize("cls", [LAVISH, AVISH])
@pytest.mark.parametrize("audio_embed", ["image", "spectrogram"])
def test_lavish_at_init_is_the_frozen_backbone_on_each_modality_alone(cls, audio_embed, backbone, spec, make_batch):
    model = build(cls, backbone, spec, audio_embed=audio_embed).eval()
    batch = make_batch(spec, [True] * 2, [True] * 2)
    out = model(batch)
    for m, expected in lavish_reference_alone(model, batch).items():
        assert_same(out["per_modality"][m], expected)
    assert_same(out["embedding"], (out["per_modality"]["audio"] + out["per_modality"]["video"]) / 2)
    # Open gates: now each modality reads the other.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gate") or name.endswith("gate_av"):
                p.fill_(1.0)
    audio, audio_new = (model(x)["per_modality"]["audio"] for x in (batch, with_new_video(batch)))
    assert not torch.allclose(audio, audio_new, rtol=0, atol=1e-4)


@pytest.mark.parametrize("latent_tokens", [3, 0])
def test_adapter_follows_its_equations_and_never_attends_absent_keys(latent_tokens, backbone):
    d = backbone.embed_dim
    cfg = LAVISHConfig(reduction=4, groups=2)
    torch.manual_seed(0)
    adapter = LAVISHAdapter(d, cfg, latent_tokens, "rand", gated=True).eval()
    with torch.no_grad():
        adapter.gate_av.fill_(0.7)
        adapter.gate.fill_(-1.3)
    x, y = torch.randn(3, 5, d), torch.randn(3, 4, d)
    keep = torch.tensor([[True] * 4, [True, False, True, False], [False] * 4])  # clip 2: Y absent
    out = adapter(x, y, keep)
    for b in range(3):
        y_b = y[b][keep[b]]  # the present keys only, dropped rather than masked
        if latent_tokens:
            t = adapter.latent[0]
            t = t + (t @ y_b.T).softmax(-1) @ y_b if len(y_b) else t  # T~ = T + softmax(T Y^T) Y
            x_hat = x[b] + 0.7 * (x[b] @ t.T).softmax(-1) @ t  # X^ = X + g_av softmax(X T~^T) T~
        else:
            x_hat = x[b] + 0.7 * (x[b] @ y_b.T).softmax(-1) @ y_b if len(y_b) else x[b]  # AVISH
        z = adapter.bn1(adapter.down(adapter.ln_before(x_hat))[None]).relu()
        z = adapter.ln_post(adapter.bn2(adapter.up(z)))[0]
        torch.testing.assert_close(out[b], -1.3 * z, rtol=1e-5, atol=1e-5)


def test_grouped_linear_is_a_grouped_1x1_conv():
    layer = GroupedLinear(8, 4, groups=2)
    x = torch.randn(2, 5, 8)
    conv = torch.nn.functional.conv1d(x.transpose(1, 2), layer.weight.reshape(4, 4, 1), groups=2)  # (B, out, N)
    torch.testing.assert_close(layer(x), conv.transpose(1, 2))


def test_lavish_audio_is_an_image_through_the_video_kernel(backbone, spec, make_batch):
    # Paper's tokenisation: a 3-channel copy of the spectrogram as frame t//2 of a zero clip gives the tubelet kernel's
    # central-frame response; the table is the video one, interpolated over the token index; one CLS for both.
    model = build(LAVISH, backbone, spec).eval()
    batch = make_batch(spec, [True] * 2, [True] * 2)
    z = model.tokens(batch, {m: torch.ones(2, dtype=torch.bool) for m in ("audio", "video")})
    # the AVE code's (time x mel) image (audio_orientation: time_mel, the default)
    clip = torch.zeros(2, backbone.tubelet, 3, spec.n_frames, spec.n_mels)
    clip[:, backbone.tubelet // 2] = batch["audio"][:, 0, None].transpose(-1, -2)
    patches = model.tokens.patch["video"](clip)  # (B, Na, D)
    pos = z["audio"][:, 1:] - patches  # the interpolated table, (B, Na, D)
    table = model.tokens.pos["video"][0]  # (Nv, D)
    assert pos.shape[1] == 12 != table.shape[0]
    torch.testing.assert_close(pos[:, 0], table[0].expand(2, -1))
    torch.testing.assert_close(pos[:, -1], table[-1].expand(2, -1))
    assert_same(z["audio"][:, 0], z["video"][:, 0])
    # A spectrogram with as many patches as the clip keeps the table as it is.
    same = build(LAVISH, backbone, dataclasses.replace(spec, n_mels=16, n_frames=32)).eval()
    batch = make_batch(same.spec, [True], [True])
    tokens = same.tokens(batch, {m: torch.ones(1, dtype=torch.bool) for m in ("audio", "video")})["audio"]
    clip = torch.zeros(1, backbone.tubelet, 3, 32, 16)
    clip[:, backbone.tubelet // 2] = batch["audio"][:, 0, None].transpose(-1, -2)
    torch.testing.assert_close(tokens[0, 1:] - same.tokens.patch["video"](clip)[0], same.tokens.pos["video"][0])


def adapter_params(cfg: LAVISHConfig | AVISHConfig, d: int) -> int:
    """One adapter by hand: latent tokens + two grouped 1x1 convs + BN/LN affine + g_av (+ g)."""
    m, _ = cfg.latent()
    h = d // cfg.reduction
    return m * d + 2 * d * h // cfg.groups + cfg.bn * 2 * (h + d) + (cfg.ln_before + cfg.ln_post) * 2 * d + 1


@pytest.mark.parametrize(
    "cls,fields",
    [
        (LAVISH, {}),
        (AVISH, {}),
        (LAVISH, {"latent_tokens": 5, "bn": False, "ln_before": False, "gate_audio": False, "train_norms": True}),
        (AVISH, {"groups": 1, "reduction": 2, "ln_post": False}),
    ],
)
def test_lavish_trains_only_adapters_and_head(cls, fields, backbone, spec):
    model = build(cls, backbone, spec, **fields)
    task = ClassificationTask(ClassificationTask.Config(), spec.num_classes, model.embed_dim)
    cfg, d, depth = model.cfg, backbone.embed_dim, backbone.depth
    gates = 2 * depth * (1 + cfg.gate_audio)  # visual adapters always gated, audio ones iff gate_audio
    norms = (2 * depth + 1) * 2 * d if cfg.train_norms else 0  # LN1, LN2 per block + the final norm
    expected = 4 * depth * adapter_params(cfg, d) + gates + norms + d * spec.num_classes + spec.num_classes
    assert count_params(model)[1] + count_params(task)[1] == expected
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all(n.startswith("adapters.") or (cfg.train_norms and "norm" in n) for n in trainable)
    assert not any(n.startswith(("tokens.", "blocks.")) and "norm" not in n for n in trainable)


def extra_macs(cls, backbone, spec, fields: dict) -> int:
    """MACs of the method minus the plain backbone on the same tokens (vanilla at Lf = L: shared, no fusion)."""
    method = build(cls, backbone, spec, audio_embed="spectrogram", **fields)
    plain = build(Vanilla, backbone, spec, fusion_layer=backbone.depth)
    return round((forward_flops(method, None, spec)["gmacs"] - forward_flops(plain, None, spec)["gmacs"]) * 1e9)


def test_avish_extra_cost_grows_with_nv_na_and_lavish_with_nv_plus_na(backbone, spec):
    d, depth, r, g, m = backbone.embed_dim, backbone.depth, 4, 2, 3
    fields = {"reduction": r, "groups": g}
    for s in (spec, dataclasses.replace(spec, frames=8, n_frames=80)):
        na, nv = num_audio_tokens(backbone, s) + 1, num_video_tokens(backbone, s) + 1  # + CLS
        bottleneck = 4 * depth * (na + nv) * d * (d // r) // g  # 4 adapters x (down + up)
        # Per adapter, LAVISH: T Y^T and its softmax times Y (m M D each), X T~^T and times T~ (m N D each).
        lavish = 2 * depth * 2 * 2 * m * d * (na + nv) + bottleneck
        avish = 2 * depth * 2 * 2 * na * nv * d + bottleneck  # X Y^T and its softmax times Y (N M D each)
        assert extra_macs(LAVISH, backbone, s, dict(fields, latent_tokens=m)) == lavish, s
        assert extra_macs(AVISH, backbone, s, fields) == avish, s


@pytest.mark.parametrize("cls", [LAVISH, AVISH])
def test_lavish_batchnorm_in_training_ignores_absent_clips(cls, backbone, spec, make_batch):
    # BatchNorm statistics come from the present clips' tokens only: a clip with no modality changes nothing.
    model = build(cls, backbone, spec).train()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gate") or name.endswith("gate_av"):
                p.fill_(1.0)
    batch = make_batch(spec, [True, False], [True, False])
    first = {k: v[:1] if torch.is_tensor(v) else v[:1] for k, v in batch.items()}
    out, alone = model(batch), model(first)
    for m in ("audio", "video"):
        # A batch of 2 and a batch of 1 sum the patch-embedding matmuls (video and audio) in different orders (~1e-7),
        # which the BatchNorm's division by a small variance scales up; a leak of the absent clip would be O(1).
        torch.testing.assert_close(out["per_modality"][m][:1], alone["per_modality"][m], rtol=0, atol=1e-4)
