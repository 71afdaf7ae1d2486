"""``harness profile``: meta-device counts against real models and against MBT-B counted by hand."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from harness.cli import main
from harness.config import ConfigError
from harness.models.complexity import count_params, forward_flops
from harness.registry import METHODS, TASKS
from harness.run.profile import load_profile, preset_path, presets, profile

TINY_INPUT = {"frames": 4, "image_size": 32, "n_mels": 32, "n_frames": 64, "num_classes": 18}  # synthetic's shapes
METHOD_FIELDS = {
    "mbt": {"fusion_layer": 0, "bottleneck_tokens": 4, "readout": "gap"},
    "vanilla": {"fusion_layer": 1},
    "cross": {"fusion_layer": 1, "readout": "gap"},
    "late": {},
    "audio_only": {},
}


def write(path, **sections) -> str:
    path.write_text(yaml.safe_dump(sections))
    return str(path)


def test_every_shipped_preset_resolves():
    assert {"mbt_b16_audioset", "vanilla_b16_audioset", "mbt_tiny"} <= set(presets())
    for name in presets():
        assert load_profile(preset_path(name)).name == name


@pytest.mark.parametrize("method", sorted(METHOD_FIELDS))
def test_meta_counts_equal_the_cpu_built_model(method, tmp_path):
    fields = {"name": method, **METHOD_FIELDS[method]}
    spec = load_profile(write(tmp_path / "p.yaml", input=TINY_INPUT, backbone={"name": "tiny"}, method=fields))
    got = profile(spec)

    torch.manual_seed(0)
    model = METHODS.get(method).build(spec.method, spec.backbone, spec.input)
    head = TASKS.get(spec.task_name)(spec.task, spec.input.num_classes, model.embed_dim)
    assert next(model.parameters()).device.type == "cpu"
    total, trainable = count_params(torch.nn.ModuleDict({"method": model, "task": head}))
    flops = forward_flops(model, head, spec.input)
    assert (got["params_total"], got["params_trainable"]) == (total, trainable)
    assert got["gflops"] == flops["gflops"] > 0  # attention included on both devices: same op counts
    assert got["gmacs"] == flops["gmacs"]


def test_tiny_preset_equals_its_run_file_without_generating_data(tmp_path):
    cache = tmp_path / "cache"
    run = write(
        tmp_path / "run.yaml",
        name="run",
        dataset={"name": "synthetic"},
        backbone={"name": "tiny"},
        method={"name": "mbt", **METHOD_FIELDS["mbt"]},
        cache_dir=str(cache),
    )
    from_run, preset = profile(load_profile(run)), profile(load_profile(preset_path("mbt_tiny")))
    for key in ("params_total", "gflops", "tokens", "input"):
        assert from_run[key] == preset[key], key
    assert not cache.exists()


def vit_block(d: int, hidden: int) -> int:
    """One pre-LN ViT block: qkv + proj (with biases), two LayerNorms, the MLP."""
    return (d * 3 * d + 3 * d) + (d * d + d) + 2 * (2 * d) + (d * hidden + hidden) + (hidden * d + d)


def test_mbt_b16_audioset_matches_a_hand_count():
    d, depth, classes = 768, 12, 527
    nv, na = 16 * 14 * 14, 50 * 8  # 32 frames / tubelet 2 x (224 / 16)²; (128 / 16) x (800 / 16)
    embeddings = (3 * 2 * 16 * 16 * d + d) + (1 * 16 * 16 * d + d)  # tubelet Conv3d, spectrogram Conv2d (1 channel)
    tables = (nv + na) * d  # positional tables; no CLS token with readout gap (scenic's GAP model)
    common = embeddings + tables + 2 * d + (d * classes + classes)  # + final LayerNorm + head
    mbt = 2 * depth * vit_block(d, 4 * d) + 4 * d + common  # two streams + Nb = 4 bottlenecks
    vanilla = depth * vit_block(d, 4 * d) + common  # one shared stack

    got = profile(load_profile(preset_path("mbt_b16_audioset")))
    assert got["tokens"] == {"video": 3136, "audio": 400}
    assert got["params_total"] == got["params_trainable"] == mbt == 174_612_239
    shared = profile(load_profile(preset_path("vanilla_b16_audioset")))
    assert shared["tokens"] == got["tokens"]
    assert shared["params_total"] == vanilla == 89_554_703  # MBT: "about 90 M" with shared weights
    assert got["gflops"] == pytest.approx(2 * got["gmacs"])


def test_cli_json_and_text(capsys):
    assert main(["profile", "--preset", "mbt_tiny", "--json", "--set", "method.fusion_layer=2"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {"params_total", "params_trainable", "gflops", "gmacs", "tokens"} <= set(out)
    assert out["method"]["fusion_layer"] == 2 and out["tokens"] == {"audio": 4, "video": 4}
    assert main(["profile", "--preset", "mbt_tiny"]) == 0
    text = capsys.readouterr().out
    assert f"total {out['params_total']:,}" in text and "tokens     audio 4, video 4" in text


def test_errors_name_the_key(capsys, tmp_path):
    assert main(["profile", "--preset", "mbt_b16"]) == 2
    assert "did you mean 'mbt_b16_audioset'?" in capsys.readouterr().err
    assert main(["profile"]) == 2
    with pytest.raises(ConfigError) as e:
        load_profile(preset_path("mbt_tiny"), ["input.frames=0", "method.fusion_layer=9", "inptu.x=1"])
    keys = [k for k, _ in e.value.errors]
    assert keys == ["--set inptu.x=1", "--set input.frames=0", "--set method.fusion_layer=9"]
    assert "did you mean 'input'?" in e.value.errors[0][1]
