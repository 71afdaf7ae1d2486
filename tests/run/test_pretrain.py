"""The synthetic-pretrained backbone: latent attributes, cache, concurrency, RNG isolation, loading into methods."""

from __future__ import annotations

import threading

import pytest
import torch

import harness.run.pretrain as pretrain_mod
from harness.config import ConfigError, RunSpec
from harness.data.synthetic import SyntheticConfig, generate
from harness.models.backbones import BackboneConfig
from harness.models.shared_vit import backbone_state
from harness.registry import METHODS
from harness.run.pretrain import PretrainConfig, apply_pretrained, pretrained_backbone
from harness.run.trial import build_model

DATA = SyntheticConfig(clips_train=24, clips_val=8, clips_test=8, image_size=16, n_mels=16, n_frames=32)
BACKBONE = BackboneConfig(name="t", embed_dim=16, depth=2, num_heads=2, patch_size=16, audio_patch=(16, 16),
                          time_embed="shared")  # fmt: skip
FAST = PretrainConfig(clips=64, epochs=2, batch_size=32)


def test_latents_leave_the_clips_unchanged_and_describe_them():
    plain, rich = generate(DATA), generate(DATA, latents=True)
    for split in plain:
        assert set(plain[split]) == {"video", "audio", "label"}
        for key in plain[split]:
            assert torch.equal(plain[split][key], rich[split][key]), (split, key)
    tr = rich["train"]
    # each frame shows the objects flashing in it: at least one, at most 1 + distractors, as many colours as shapes
    n_colours, n_shapes = tr["frame_colours"].sum(-1), tr["frame_shapes"].sum(-1)  # (n, T)
    assert torch.equal(n_colours, n_shapes) and int(n_colours.max()) <= 1 + DATA.distractors
    assert (tr["frame_colours"].any(1).sum(-1) == 1 + DATA.distractors).all(), "every object flashes at least once"
    # the label is (colour of the sounding object) x timbre; the sounding object is drawn exactly in its slots
    colour = tr["label"] // DATA.timbres
    assert torch.equal(tr["label"] % DATA.timbres, tr["timbre"])
    per_frame = tr["sounding"].repeat_interleave(DATA.frames // DATA.slots, dim=1)  # (n, T)
    drawn = tr["frame_colours"].gather(2, colour[:, None, None].expand(-1, DATA.frames, 1))[..., 0]
    assert torch.equal(drawn, per_frame)
    drawn_shape = tr["frame_shapes"].gather(2, tr["pitch"][:, None, None].expand(-1, DATA.frames, 1))[..., 0]
    assert (drawn_shape | ~per_frame).all()


def test_pretraining_is_cached_deterministic_and_moves_the_weights(tmp_path):
    state, key = pretrained_backbone(BACKBONE, "image", DATA, tmp_path / "a", FAST)
    path = tmp_path / "a" / "pretrained" / f"{key}.safetensors"
    stamp = path.stat().st_mtime_ns
    again, key2 = pretrained_backbone(BACKBONE, "image", DATA, tmp_path / "a", FAST)  # loaded, not retrained
    assert key2 == key and path.stat().st_mtime_ns == stamp
    other, key3 = pretrained_backbone(BACKBONE, "image", DATA, tmp_path / "b", FAST)  # a cold cache elsewhere
    assert key3 == key
    for k in state:
        assert torch.equal(state[k], again[k]) and torch.equal(state[k], other[k]), k
    torch.manual_seed(0)
    fresh = backbone_state(METHODS.get("frozen").build(METHODS.get("frozen").Config(), BACKBONE, _spec()))
    assert set(fresh) == set(state)
    assert not torch.equal(fresh["blocks.0.attn.qkv.weight"], state["blocks.0.attn.qkv.weight"])
    # the key follows what the weights depend on
    assert pretrained_backbone(BACKBONE, "spectrogram", DATA, tmp_path / "a", FAST)[1] != key
    assert pretrain_mod.cache_key(BACKBONE, "image", DATA, FAST) != pretrain_mod.cache_key(
        BACKBONE, "image", DATA, FAST.model_copy(update={"epochs": 3})
    )


def test_concurrent_requests_pretrain_once(tmp_path, monkeypatch):
    calls = []
    real = pretrain_mod.pretrain
    monkeypatch.setattr(pretrain_mod, "pretrain", lambda *a: calls.append(1) or real(*a))
    results = []
    threads = [
        threading.Thread(target=lambda: results.append(pretrained_backbone(BACKBONE, "image", DATA, tmp_path, FAST)))
        for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(results) == 2
    assert results[0][1] == results[1][1]
    assert not list((tmp_path / "pretrained").glob("*.tmp*")), "no temporary file left behind"


def _spec():
    from harness.data.synthetic import input_spec

    return input_spec(DATA)


def _run(method: dict, **backbone) -> RunSpec:
    bb = {"name": "tiny", "embed_dim": 16, "depth": 2, "num_heads": 2, "patch_size": 16, "audio_patch": [16, 16],
          "pretrained": "synthetic", **backbone}  # fmt: skip
    data = {"name": "synthetic", **DATA.model_dump(exclude={"seed"})}
    return RunSpec.from_dict({"name": "t", "seed": 3, "dataset": data, "backbone": bb, "method": method})


def test_trials_load_the_same_backbone_and_draw_the_same_numbers(tmp_path, monkeypatch):
    monkeypatch.setattr(pretrain_mod, "PretrainConfig", lambda: FAST)
    spec = _run({"name": "lavish"})
    spec.cache_dir = str(tmp_path)
    cold, cold_head = build_model(spec, _spec())  # pretrains
    cold_next = torch.rand(3)
    warm, warm_head = build_model(spec, _spec())  # loads
    assert torch.equal(torch.rand(3), cold_next), "pretraining must not move the trial's random stream"
    key = pretrain_mod.pretrained_key(spec)  # the trial's tag: the one file both trials loaded
    assert sorted(p.name for p in (tmp_path / "pretrained").glob("*.safetensors")) == [f"{key}.safetensors"]
    for a, b in zip(cold.state_dict().values(), warm.state_dict().values()):
        assert torch.equal(a, b)
    assert torch.equal(cold_head.head.weight, warm_head.head.weight)
    spec_adapter = _run({"name": "adapter"})
    spec_adapter.cache_dir = str(tmp_path)
    adapter, _ = build_model(spec_adapter, _spec())
    assert pretrain_mod.pretrained_key(spec_adapter) == key
    for k, v in backbone_state(adapter).items():
        assert torch.equal(v, backbone_state(cold)[k]), k


def test_pretrained_is_refused_where_it_cannot_apply(tmp_path):
    spec = _run({"name": "mbt"})
    method = METHODS.get("mbt").build(spec.method, spec.backbone, _spec())
    with pytest.raises(ConfigError, match="backbone.pretrained"):
        apply_pretrained(method, spec, tmp_path)
    assert apply_pretrained(method, _run({"name": "mbt"}, pretrained="none"), tmp_path) is None
