"""The ``segmentation`` task: AVSBench's mIoU and F-score against the formulas written out, the decoder, the loss."""

from __future__ import annotations

import math

import pytest
import torch

from harness.api import InputSpec
from harness.models.backbones import BackboneConfig
from harness.registry import METHODS
from harness.tasks.segmentation import IGNORE, SegmentationConfig, SegmentationTask, mask_iou

BIG = 20.0  # a logit whose sigmoid is 1 (or 0) in float32


def reference_iou(pred: list[list[int]], gt: list[list[int]]) -> float:
    """AVSBench's mask_iou of one frame, written out: |P ∩ G| / |P ∪ G|; an empty G scores |¬P ∩ ¬G| / pixels."""
    cells = [(p, g) for prow, grow in zip(pred, gt) for p, g in zip(prow, grow)]
    if not any(g for _, g in cells):
        return sum(1 for p, g in cells if not p and not g) / (len(cells) + 1e-7)
    return sum(1 for p, g in cells if p and g) / (sum(1 for p, g in cells if p or g) + 1e-7)


def reference_fscore(probs: list[list[list[float]]], gts: list[list[list[int]]]) -> float:
    """AVSBench's Eval_Fmeasure of one video, written out with a loop over the 255 thresholds."""
    thetas = torch.linspace(0, 1 - 1e-10, 255).tolist()  # float32 values, compared with float32 probabilities
    curves = []
    for prob, gt in zip(probs, gts):
        p = [float(torch.tensor(x, dtype=torch.float32)) for row in prob for x in row]
        g = [x for row in gt for x in row]
        if sum(g) == 0:
            continue  # frames with an all-black mask are left out
        curve = []
        for theta in thetas:
            predicted = [x >= theta for x in p]
            tp = sum(1 for q, y in zip(predicted, g) if q and y)
            precision, recall = tp / (sum(predicted) + 1e-20), tp / (sum(g) + 1e-20)
            den = 0.3 * precision + recall
            curve.append(1.3 * precision * recall / den if den else 0.0)
        curves.append(curve)
    if not curves:
        return 0.0
    return max(sum(c[k] for c in curves) / len(curves) for k in range(255))


def logits_of(pred: list[list[int]]) -> torch.Tensor:
    return torch.tensor(pred, dtype=torch.float32) * 2 * BIG - BIG  # 1 -> +20, 0 -> -20


FRAMES = {  # (prediction, mask) pairs of 3x3 frames
    "overlap": ([[1, 1, 0], [1, 1, 0], [0, 0, 0]], [[0, 1, 1], [0, 1, 1], [0, 0, 0]]),  # 2 / 6
    "exact": ([[0, 0, 0], [0, 1, 0], [0, 0, 0]], [[0, 0, 0], [0, 1, 0], [0, 0, 0]]),  # 1
    "empty_gt": ([[1, 0, 0], [0, 0, 0], [0, 0, 0]], [[0, 0, 0], [0, 0, 0], [0, 0, 0]]),  # 8 / 9 background agree
    "missed": ([[0, 0, 0], [0, 0, 0], [0, 0, 0]], [[1, 1, 0], [0, 0, 0], [0, 0, 0]]),  # 0
}


@pytest.mark.parametrize("case", sorted(FRAMES))
def test_iou_of_a_frame_is_the_written_out_formula(case):
    pred, gt = FRAMES[case]
    got = mask_iou(logits_of(pred)[None], torch.tensor(gt)[None])
    assert got.item() == pytest.approx(reference_iou(pred, gt), abs=1e-6)
    by_hand = {"overlap": 2 / 6, "exact": 1.0, "empty_gt": 8 / 9, "missed": 0.0}[case]
    assert got.item() == pytest.approx(by_hand, abs=1e-6)


def test_miou_and_fscore_average_per_video_as_avsbench():
    # Two videos of two frames; graded probabilities so that the F-score's thresholds matter.
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 2, 3, 3, generator=g) * 2
    masks = torch.tensor(
        [
            [FRAMES["overlap"][1], FRAMES["empty_gt"][1]],  # video 0: one frame with an object, one without
            [FRAMES["exact"][1], FRAMES["missed"][1]],
        ]
    )
    task = SegmentationTask(SegmentationConfig(), 1, 16)
    got = task.metrics(logits, masks)

    probs = logits.sigmoid()
    preds = (probs > 0.5).int().tolist()
    video_iou = [sum(reference_iou(p, y) for p, y in zip(preds[v], masks[v].tolist())) / 2 for v in range(2)]
    video_f = [reference_fscore(probs[v].tolist(), masks[v].tolist()) for v in range(2)]
    assert got["miou"] == pytest.approx(100 * sum(video_iou) / 2, abs=1e-4)
    assert got["fscore"] == pytest.approx(100 * sum(video_f) / 2, abs=1e-4)


def test_fscore_of_a_perfect_and_of_an_empty_video():
    task = SegmentationTask(SegmentationConfig(), 1, 16)
    gt = torch.tensor([[FRAMES["overlap"][1]]])  # (1, 1, 3, 3)
    perfect = task.metrics(logits_of(FRAMES["overlap"][1])[None, None], gt)
    assert perfect == {"miou": pytest.approx(100.0, abs=1e-4), "fscore": pytest.approx(100.0, abs=1e-4)}
    # A video whose masks are all empty: IoU counts the background, the F-score is the code's 0.
    empty = task.metrics(torch.full((1, 1, 3, 3), -BIG), torch.zeros(1, 1, 3, 3, dtype=torch.long))
    assert empty["miou"] == pytest.approx(100.0, abs=1e-4) and empty["fscore"] == 0.0


def test_unannotated_frames_are_left_out():
    task = SegmentationTask(SegmentationConfig(), 1, 16)
    pred, gt = FRAMES["overlap"]
    logits = torch.stack([logits_of(pred), logits_of(pred)])[None]  # (1, 2, 3, 3)
    labels = torch.stack([torch.tensor(gt), torch.full((3, 3), IGNORE)])[None]
    assert task.metrics(logits, labels)["miou"] == pytest.approx(100 * 2 / 6, abs=1e-4)
    loss = task.example_loss(logits, labels)
    only_first = task.example_loss(logits[:, :1], labels[:, :1])
    torch.testing.assert_close(loss, only_first)


TINY = dict(name="t", embed_dim=16, depth=2, num_heads=2, patch_size=8, tubelet=1, audio_patch=(8, 8))
SPEC = InputSpec(frames=2, image_size=32, n_mels=16, n_frames=16, num_classes=1)


@pytest.mark.parametrize("method", ["mbt", "video_only"])
@pytest.mark.parametrize("loss", ["bce", "bce_dice", "bce_iou"])
def test_decoder_trains_on_the_tokens(method, loss):
    torch.manual_seed(0)
    cls = METHODS.get(method)
    model = cls.build(cls.Config(name=method), BackboneConfig(**TINY), SPEC)
    task = SegmentationTask(SegmentationConfig(loss=loss, decoder_width=16), 1, model.embed_dim)
    task.bind(model)
    batch = {"video": torch.randn(2, 2, 3, 32, 32), "audio": torch.randn(2, 1, 16, 16)}
    batch["label"] = (torch.rand(2, 2, 32, 32) > 0.7).long()
    out = model(batch)
    assert task.logits(out, batch).shape == (2, 2, 32, 32)
    value = task.loss(out, batch)
    assert math.isfinite(value.item())
    value.backward()
    assert all(p.grad is not None for p in task.parameters())


def test_a_method_without_video_tokens_is_refused():
    cls = METHODS.get("audio_only")
    model = cls.build(cls.Config(name="audio_only"), BackboneConfig(**TINY), SPEC)
    with pytest.raises(ValueError, match="consumes no video"):
        SegmentationTask(SegmentationConfig(), 1, 16).bind(model)


def test_swin_stages_feed_the_fpn():
    from harness.testing.contract import SWIN_BACKBONE

    cls = METHODS.get("lavish")
    spec = InputSpec(frames=2, image_size=16, n_mels=16, n_frames=24, num_classes=1)
    model = cls.build(cls.Config(name="lavish"), BackboneConfig(**SWIN_BACKBONE), spec)
    task = SegmentationTask(SegmentationConfig(decoder_width=16), 1, model.embed_dim)
    task.bind(model)
    assert task.use_stages and len(task.decoder.lateral) == 2
    batch = {"video": torch.randn(1, 2, 3, 16, 16), "audio": torch.randn(1, 1, 16, 24)}
    assert task.logits(model(batch), batch).shape == (1, 2, 16, 16)


def test_the_config_refuses_a_method_without_video_tokens(cache):
    from harness.config import ConfigError, resolve_run

    run = {"name": "t", "dataset": {"name": "synthetic_avs"}, "backbone": {"name": "tiny"}, "cache_dir": str(cache)}
    resolve_run({**run, "method": {"name": "mbt"}})
    with pytest.raises(ConfigError, match="'audio_only' consumes no video"):
        resolve_run({**run, "method": {"name": "audio_only"}})


def test_the_decoder_is_counted_in_the_model_cost():
    from harness.models.complexity import count_params, forward_flops
    from harness.run.trial import model_cost

    cls = METHODS.get("mbt")
    model = cls.build(cls.Config(name="mbt"), BackboneConfig(**TINY), SPEC)
    task = SegmentationTask(SegmentationConfig(decoder_width=16), 1, model.embed_dim)
    task.bind(model)
    cost = model_cost(model, task, SPEC)
    assert cost["model/params_total"] == count_params(model)[0] + count_params(task)[0]
    assert count_params(task)[0] == sum(p.numel() for p in task.decoder.parameters()) > 0
    assert cost["model/gflops"] > forward_flops(model, None, SPEC)["gflops"]
