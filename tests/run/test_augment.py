"""Training augmentations (mixup, modality-mixup, modality dropout), stochastic depth, and a run that uses them."""

from __future__ import annotations

import pytest
import torch

from harness.api import InputSpec
from harness.config import ConfigError, RunSpec, TrainConfig
from harness.models.backbones import BackboneConfig
from harness.registry import METHODS
from harness.run.augment import augment, clip_uniforms, drop_modalities, mix_weights, mixup
from harness.run.trial import run_trial
from harness.tasks.classification import ClassificationTask
from harness.tasks.multihead import MultiheadTask


def _batch(b: int = 6, c: int = 4, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    ones = torch.ones(b, dtype=torch.bool)
    return {"video": torch.randn(b, 2, 3, 4, 4, generator=g), "audio": torch.randn(b, 1, 4, 8, generator=g),
            "label": torch.randint(0, c, (b,), generator=g), "id": [f"train-{i}" for i in range(b)],
            "audio_present": ones, "video_present": ones.clone()}  # fmt: skip


def test_mixup_with_weight_one_is_the_identity():
    task = ClassificationTask(ClassificationTask.Config(), 4, 8)
    batch = _batch()
    batch["audio_present"][0] = False  # the partner of clip 5 lacks audio: with w = 1 nothing of it enters
    out = mixup(batch, {"audio": 1.0, "video": 1.0}, task.soft_targets)
    for k in ("video", "audio", "audio_present", "video_present"):
        assert torch.equal(out[k], batch[k]), k
    assert torch.equal(out["label"], torch.nn.functional.one_hot(batch["label"], 4).float())
    assert "label:audio" not in out
    z = torch.randn(6, 4)
    torch.testing.assert_close(task.example_loss(z, out["label"]), task.example_loss(z, batch["label"]))


def test_mixup_mixes_with_the_reversed_batch():
    task = ClassificationTask(ClassificationTask.Config(), 4, 8)
    batch = _batch()
    batch["audio_present"][5] = False
    out = mixup(batch, {"audio": 0.7, "video": 0.7}, task.soft_targets)
    torch.testing.assert_close(out["audio"][1], 0.7 * batch["audio"][1] + 0.3 * batch["audio"][4])
    y = task.soft_targets(batch["label"])
    torch.testing.assert_close(out["label"][2], 0.7 * y[2] + 0.3 * y[3])
    # clip 0's partner is clip 5: audio present via clip 0; clip 5's own audio is absent but its partner's enters
    assert out["audio_present"].all()


def test_modality_mixup_has_one_weight_per_modality_and_label_per_modality():
    w = mix_weights(0.5, per_modality=True, key=(0, 0, 0))
    assert w["audio"] != w["video"]
    assert mix_weights(0.5, per_modality=True, key=(0, 0, 0)) == w  # deterministic under the key
    assert mix_weights(0.5, per_modality=True, key=(0, 0, 1)) != w
    shared = mix_weights(0.5, per_modality=False, key=(0, 0, 0))
    assert shared["audio"] == shared["video"]

    task = MultiheadTask(MultiheadTask.Config(heads={"verb": 3, "noun": 5}), 8, 8)
    batch = _batch()
    batch["label"] = {"verb": torch.randint(0, 3, (6,)), "noun": torch.randint(0, 5, (6,))}
    out = mixup(batch, {"audio": 0.9, "video": 0.2}, task.soft_targets)
    y = task.soft_targets(batch["label"])
    torch.testing.assert_close(out["label:audio"]["noun"], 0.9 * y["noun"] + 0.1 * y["noun"].flip(0))
    torch.testing.assert_close(out["label:video"]["verb"], 0.2 * y["verb"] + 0.8 * y["verb"].flip(0))
    torch.testing.assert_close(out["label"]["verb"], 0.55 * y["verb"] + 0.45 * y["verb"].flip(0))  # mean weight
    torch.testing.assert_close(out["video"], 0.2 * batch["video"] + 0.8 * batch["video"].flip(0))


def test_modality_dropout_never_drops_both_and_respects_p():
    n, p = 4000, 0.3
    batch = {"id": [f"train-{i}" for i in range(n)], "audio_present": torch.ones(n, dtype=torch.bool),
             "video_present": torch.ones(n, dtype=torch.bool)}  # fmt: skip
    batch["video_present"][:200] = False  # these keep their audio whatever is drawn
    out = drop_modalities(batch, p, key=(0, 0, 0))
    a, v = out["audio_present"], out["video_present"]
    assert (a | v).all() and a[:200].all()
    dropped = (~a | ~v)[200:].float()
    assert abs(dropped.mean().item() - p) < 0.03  # 4 standard errors
    assert abs((~a[200:]).float().mean().item() - p / 2) < 0.03  # audio and video equally likely
    again = drop_modalities(batch, p, key=(0, 0, 0))
    assert torch.equal(again["audio_present"], a)  # deterministic under the key
    assert not torch.equal(drop_modalities(batch, p, key=(1, 0, 0))["audio_present"], a)  # seed matters
    # a clip's draw depends on its id, not on its position (same decisions on every data-parallel slice)
    u = clip_uniforms(batch["id"], (0, 0, 0))
    torch.testing.assert_close(clip_uniforms(batch["id"][10:20], (0, 0, 0)), u[10:20])


def test_augment_is_off_by_default_and_modality_mixup_needs_alpha():
    task = ClassificationTask(ClassificationTask.Config(), 4, 8)
    batch = _batch()
    assert augment(batch, task, TrainConfig(), key=(0, 0, 0)) is batch
    out = augment(batch, task, TrainConfig(mixup_alpha=0.5, modality_mixup=True), key=(0, 0, 0))
    assert {"label:audio", "label:video"} <= set(out) and out["label"].dtype == torch.float32
    with pytest.raises(ValueError, match="modality_mixup=true needs mixup_alpha > 0"):
        TrainConfig(modality_mixup=True)


def test_stochastic_depth_is_on_in_training_and_off_in_eval():
    inp = InputSpec(frames=4, image_size=32, n_mels=32, n_frames=64, num_classes=10)
    bb = dict(name="tiny", embed_dim=16, depth=2, num_heads=2, patch_size=32, audio_patch=(32, 16))
    cfg = METHODS.get("vanilla").Config(name="vanilla")
    torch.manual_seed(0)
    dropping = METHODS.get("vanilla").build(cfg, BackboneConfig(**bb, drop_path=0.9), inp)
    plain = METHODS.get("vanilla").build(cfg, BackboneConfig(**bb), inp)
    plain.load_state_dict(dropping.state_dict())
    g = torch.Generator().manual_seed(0)
    ones = torch.ones(8, dtype=torch.bool)
    batch = {"video": torch.randn(8, 4, 3, 32, 32, generator=g), "audio": torch.randn(8, 1, 32, 64, generator=g),
             "audio_present": ones, "video_present": ones}  # fmt: skip
    with torch.no_grad():
        a, b = (dropping.train()(batch)["embedding"] for _ in range(2))
        assert not torch.allclose(a, b)  # residual branches dropped at random in training
        assert torch.allclose(plain.train()(batch)["embedding"], plain(batch)["embedding"])  # nothing else random
        torch.testing.assert_close(dropping.eval()(batch)["embedding"], plain.eval()(batch)["embedding"])


def test_run_trial_with_mixup_and_modality_dropout(tiny_run):
    tiny_run["train"].update(mixup_alpha=0.5, modality_mixup=True, modality_dropout=0.3)
    final = run_trial(RunSpec.from_dict(tiny_run), _Quiet())
    assert final["train/loss"] == final["train/loss"] and 0 <= final["test/top1"] <= 100
    plain = dict(tiny_run, train={**tiny_run["train"], "mixup_alpha": 0.0, "modality_mixup": False,
                                  "modality_dropout": 0.0})  # fmt: skip
    assert run_trial(RunSpec.from_dict(plain), _Quiet())["train/loss"] != final["train/loss"]  # it took effect
    with pytest.raises(ConfigError, match="train: modality_mixup=true needs mixup_alpha > 0"):
        RunSpec.from_dict(dict(tiny_run, train={"modality_mixup": True}))


class _Quiet:
    def start(self, info):
        pass

    def report(self, metrics, step):
        pass
