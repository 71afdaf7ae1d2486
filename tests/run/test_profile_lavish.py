"""LAVISH cost presets (``harness/run/profiles/lavish_*_ave.yaml``) against the parameter counts written out by hand.

The formulas follow the modules, not the code: a ViT (patch conv, positions with the CLS row, CLS, L blocks of 12 D² +
13 D, final norm), 4 L adapters (``methods/parts/lavish_adapter.py``) and the heads. The paper's accounting is the AVE
code's own (GenjiB/LAVISH ``AVE/main_trans.py`` at ca4fd0e counts parameters named 'ViT'/'swin' as frozen,
'adapter_blocks' and 'mlp_class' as trained): it adds the 21k head, Linear(2D, 512) and Linear(512, 29), leaves the
harness's task head out, and does not count the Swin model's never-called ``adapter_token_downsampler``; that
version's adapters have no ``gate_tk``. For Swin-V2-L it prints 10,036,061 trainable of 238,808,610.
"""

from __future__ import annotations

import pytest

from harness.config import ConfigError
from harness.run.profile import format_profile, load_profile, preset_path, profile

PATCH, TOKENS, CLASSES, IN21K = 16, 196, 29, 21843
R, G, M = 8, 2, 2  # the README's flags: reduction, groups, latent tokens


def linear(i: int, o: int) -> int:
    return i * o + o


def vit(d: int, depth: int) -> int:
    """timm's ViT without its head: patch conv, 197 positions (CLS row), CLS, blocks, final norm."""
    return 3 * PATCH * PATCH * d + d + (TOKENS + 1) * d + depth * (12 * d * d + 13 * d) + 2 * d


def adapter(d: int) -> int:
    """latent tokens, gate_av, LN before, grouped down/up (no bias), BN x 2, LN post, output gate."""
    h = d // R
    return M * d + 1 + 2 * d + 2 * (d * h // G) + 2 * h + 2 * d + 2 * d + 1


@pytest.fixture(scope="module", params=[("lavish_vitb16_ave", 768, 12), ("lavish_vitl16_ave", 1024, 24)])
def preset(request):
    name, d, depth = request.param
    return profile(load_profile(preset_path(name))), d, depth


def test_ours_is_the_frozen_vit_plus_adapters_plus_our_head(preset):
    p, d, depth = preset
    adapters = 4 * depth * adapter(d)
    assert p["params_total"] == vit(d, depth) + adapters + linear(d, CLASSES)
    assert p["params_trainable"] == adapters + linear(d, CLASSES)
    assert p["tokens"] == {"audio": (128 // PATCH) * (102 // PATCH), "video": TOKENS}  # 8 x 6 = 48, 14 x 14


def test_the_paper_line_adds_the_21k_head_and_the_ave_head_and_drops_ours(preset):
    p, d, depth = preset
    paper = p["paper"]
    trainable = 4 * depth * adapter(d) + linear(2 * d, 512) + linear(512, CLASSES)
    assert paper["params_trainable"] == trainable
    assert paper["params_total"] == vit(d, depth) + linear(d, IN21K) + trainable
    assert paper["parts"]["imagenet21k_head"] == d * 21843 + 21843
    lines = format_profile(p).splitlines()
    assert lines[-2].startswith("paper      total ") and "method without our task head" in lines[-2]
    assert lines[-3].startswith("forward")  # ours stays on its own lines, above


def test_image_mode_audio_tokens_follow_the_video_patch_not_audio_patch():
    spec = load_profile(preset_path("lavish_vitb16_ave"), ["backbone.audio_patch=[128, 2]"])
    assert profile(spec)["tokens"]["audio"] == 48  # the spectrogram is cut in 16² patches (SharedTokenizer)


def test_a_paper_part_is_a_linear_or_a_count_not_both(tmp_path):
    text = preset_path("lavish_vitb16_ave").read_text()
    bad = text.replace("{name: imagenet21k_head, in_features", "{name: imagenet21k_head, params: 48, in_features")
    assert bad != text
    path = tmp_path / "bad.yaml"
    path.write_text(bad)
    with pytest.raises(ConfigError, match="paper_extras.*imagenet21k_head"):
        load_profile(path)


SWIN_PRESETS = [
    ("lavish_swinv2b_ave", "swinv2_base_window12_192", 128),
    ("lavish_swinv2l_ave", "swinv2_large_window12_192", 192),
]


@pytest.mark.parametrize(("name", "timm_name", "c"), SWIN_PRESETS)
def test_swin_presets_are_timms_swin_plus_adapters_at_every_stage_width(name, timm_name, c):
    """Swin-V2 presets: timm's own model (built here from timm's registry, on meta) + 4 adapters per block."""
    import timm
    import torch

    p = profile(load_profile(preset_path(name)))
    with torch.device("meta"):
        swin = sum(t.numel() for t in timm.create_model(timm_name, num_classes=0).parameters())
        head22k = sum(t.numel() for t in torch.nn.Linear(8 * c, 21841).parameters())
    widths = [c] * 2 + [2 * c] * 2 + [4 * c] * 18 + [8 * c] * 2  # blocks of the 2/2/18/2 stages
    adapters = sum(4 * adapter(d) for d in widths)
    assert p["params_trainable"] == adapters + linear(8 * c, CLASSES)
    assert p["params_total"] == swin + adapters + linear(8 * c, CLASSES)
    assert p["tokens"] == {"audio": 48 * 48, "video": 48 * 48}  # 192² through 4² patches, both modalities
    trainable = adapters + linear(16 * c, 512) + linear(512, CLASSES)  # no adapter_token_downsampler: not counted
    assert p["paper"]["params_trainable"] == trainable
    assert p["paper"]["params_total"] == swin + head22k + trainable
    if name == "lavish_swinv2l_ave":  # what AVE/main_trans.py prints for the model of AVE/nets/net_trans.py
        assert (p["paper"]["params_trainable"], p["paper"]["params_total"]) == (10_036_061, 238_808_610)
