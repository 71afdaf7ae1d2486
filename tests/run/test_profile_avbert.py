"""The AVBERT presets (Lee et al., ICLR 2021) against a hand count and the paper's 128 M -> 4 M transformers."""

from __future__ import annotations

import pytest
import torch
import yaml

from harness.models.complexity import count_params, forward_flops
from harness.registry import METHODS, TASKS
from harness.run.profile import format_profile, load_profile, preset_path, profile

D, HIDDEN, LAYERS, RANK, GROUPS = 768, 3072, 6, 128, 3  # BERT-base; 6 layers per encoder; visual, audio, multimodal


def linear(n: int, m: int) -> int:
    return n * m + m


def factor(n: int, m: int) -> int:
    """U (M x r) + b shared; V_k (r x N) and Q_k (r x r, stored whole by the orthogonal parametrisation) per group."""
    return linear(RANK, m) + GROUPS * (RANK * n + RANK * RANK)


def bert_layer(lin) -> int:
    """Q, K, V, attention output, FFN in, FFN out, and two LayerNorms."""
    return 4 * lin(D, D) + lin(D, HIDDEN) + lin(HIDDEN, D) + 2 * 2 * D


def test_transformer_counts_match_the_hand_count_and_the_paper():
    none = profile(load_profile(preset_path("avbert_none")))
    shared = profile(load_profile(preset_path("avbert_shared_lowrank")))
    for p in (none, shared):
        assert p["tokens"] == {"video": 10, "audio": 10}  # + 1 CLS each: AVBERT's 1 + 10
    transformers_none = 3 * LAYERS * bert_layer(linear)  # three encoders, nothing shared
    transformers_shared = bert_layer(factor)  # one layer for every depth and encoder
    assert none["params_parts"]["method.encoders"] == transformers_none == 127_581_696
    assert shared["params_parts"]["method.encoders"] == transformers_shared == 3_843_840
    # The paper: "from 128 million to 4 million parameters", "up to 97 %".
    assert round(transformers_none / 1e6) == 128 and round(transformers_shared / 1e6) == 4
    assert round(100 * (1 - transformers_shared / transformers_none)) == 97
    # Everything outside the encoders is the same in both presets (tokenisers, embedding norms, head, token types).
    assert none["params_total"] - transformers_none == shared["params_total"] - transformers_shared
    assert "method.encoders 3,843,840" in format_profile(shared)


@pytest.mark.parametrize("fields", [{"rank": 8}, {"rank": None, "sharing": "none", "fusion": "late"}])
def test_meta_counts_equal_the_cpu_built_lowrank(fields, tmp_path):
    path = tmp_path / "p.yaml"
    tiny_input = {"frames": 4, "image_size": 32, "n_mels": 32, "n_frames": 64, "num_classes": 18}
    path.write_text(
        yaml.safe_dump({"input": tiny_input, "backbone": {"name": "tiny"}, "method": {"name": "lowrank", **fields}})
    )
    spec = load_profile(path)
    got = profile(spec)
    torch.manual_seed(0)
    model = METHODS.get("lowrank").build(spec.method, spec.backbone, spec.input)
    head = TASKS.get(spec.task_name)(spec.task, spec.input.num_classes, model.embed_dim)
    assert got["params_total"] == count_params(torch.nn.ModuleDict({"method": model, "task": head}))[0]
    assert got["params_parts"]["method.encoders"] == count_params(model.encoders)[0]
    assert got["gflops"] == forward_flops(model, head, spec.input)["gflops"] > 0


def test_avbert_cnn_counts_the_front_ends_apart_from_the_transformers():
    """The per-clip CNNs as torchvision / timm build them (classifier dropped) + their projection to D and LayerNorm,
    and the transformers as in avbert_shared_lowrank."""
    import timm
    from torchvision.models.video import r2plus1d_18

    video = r2plus1d_18(weights=None)
    video_n = count_params(video)[0] - linear(512, 400) + linear(512, D) + 2 * D
    audio_n = count_params(timm.create_model("resnet50", in_chans=1, num_classes=0))[0] + linear(2048, D) + 2 * D
    p = profile(load_profile(preset_path("avbert_cnn")))
    assert p["params_front_ends"] == {"video": video_n, "audio": audio_n}
    assert p["params_parts"]["method.encoders"] == 3_843_840
    assert p["tokens"] == {"video": 10, "audio": 10}
    assert "cnn        video 31,695,645" in format_profile(p)
