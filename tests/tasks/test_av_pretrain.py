"""av_pretrain's objectives against written-out references, CANS's rule on hand-made embeddings, and that a batch
without labels trains (``harness/tasks/av_pretrain.py``)."""

from __future__ import annotations

import math

import pytest
import torch

from harness.api import InputSpec
from harness.models.backbones import BackboneConfig, cnn_tiny
from harness.tasks.av_pretrain import (
    AVPretrainConfig,
    AVPretrainTask,
    cpp_loss,
    descriptors,
    draw_masks,
    draw_negatives,
    info_nce,
    negative_probabilities,
)
from methods.lowrank import LowRank, LowRankConfig


def cos(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b))
    return dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def test_info_nce_equals_the_written_out_formula():
    pred = [[1.0, 0.0, 2.0], [0.5, -1.0, 0.0]]
    pos = [[1.0, 1.0, 1.0], [0.0, -2.0, 1.0]]
    neg = [[[2.0, 0.0, 1.0], [-1.0, 0.5, 0.0]], [[1.0, 1.0, 0.0], [0.0, 0.0, 3.0]]]
    tau = 0.5
    want = []
    for p, q, ns in zip(pred, pos, neg):
        num = math.exp(cos(p, q) / tau)
        den = num + sum(math.exp(cos(p, n) / tau) for n in ns)
        want.append(-math.log(num / den))
    got = info_nce(torch.tensor(pred), torch.tensor(pos), torch.tensor(neg), tau)
    assert got.tolist() == pytest.approx(want, rel=1e-5)


def test_cpp_loss_equals_the_written_out_formula():
    logits, same = [2.0, -0.5, 0.3], [True, True, False]
    sig = [1 / (1 + math.exp(-z)) for z in logits]
    want = [-(math.log(s) if y else math.log(1 - s)) for s, y in zip(sig, same)]
    assert cpp_loss(torch.tensor(logits), torch.tensor(same)).tolist() == pytest.approx(want, rel=1e-5)


def hand_made() -> dict[str, torch.Tensor]:
    """Four clips (K = 2): 0 and 1 alike, 2 half-way, 3 opposite to 0, in both modalities."""
    base = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.2, 1.0], [-1.0, 0.0]])  # (4, 2)
    clip = base[:, None].expand(4, 2, 2)
    return {"video": clip.clone(), "audio": clip.clone()}


def test_cans_probabilities_follow_their_rule():
    tokens = hand_made()
    desc = descriptors(tokens)
    base = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.2, 1.0], [-1.0, 0.0]])
    sim = [[cos(a, b) for b in base.tolist()] for a in base.tolist()]  # descriptors of equal modalities: base's
    torch.testing.assert_close(desc @ desc.T, torch.tensor(sim), atol=1e-6, rtol=0)
    tau = 0.5
    for rule, sign in (("similar", 1), ("dissimilar", -1)):
        p = negative_probabilities(desc, rule, tau)
        for i in range(4):
            z = [math.exp(sign * sim[i][j] / tau) if j != i else 0.0 for j in range(4)]
            assert p[i].tolist() == pytest.approx([x / sum(z) for x in z], abs=1e-6)
    uniform = negative_probabilities(desc, "random", tau)
    torch.testing.assert_close(uniform, (1 - torch.eye(4)) / 3)


def test_cans_draws_the_most_and_least_similar_at_low_temperature():
    desc = descriptors(hand_made())
    g = torch.Generator().manual_seed(0)
    similar = draw_negatives(negative_probabilities(desc, "similar", 1e-3), 1, g)[:, 0]
    dissimilar = draw_negatives(negative_probabilities(desc, "dissimilar", 1e-3), 1, g)[:, 0]
    assert similar.tolist() == [1, 0, 1, 2]  # clip 3 (-1, 0): nearest clip 2 (cos -0.2 vs -1, -0.99)
    assert dissimilar.tolist() == [3, 3, 3, 0]
    two = draw_negatives(negative_probabilities(desc, "similar", 0.05), 2, g)  # 2 is e^24 times likelier than 3
    assert sorted(two[0].tolist()) == [1, 2] and 0 not in two[0].tolist()  # without replacement, never itself


def test_masks_take_a_fixed_count_per_row():
    m = draw_masks(50, 10, 0.15, "cpu", torch.Generator().manual_seed(0))
    assert (m.sum(1) == 2).all()  # round(1.5) = 2
    assert (draw_masks(20, 2, 0.15, "cpu").sum(1) == 1).all()  # at least one
    assert m.any(0).all()  # every position is drawn somewhere


def build(**task):
    torch.manual_seed(0)
    backbone = BackboneConfig(**{**cnn_tiny(), "embed_dim": 16, "depth": 2, "num_heads": 2, "cnn_width": 4})
    spec = InputSpec(frames=4, image_size=16, n_mels=16, n_frames=32, num_classes=5, clips=2)
    method = LowRank.build(LowRankConfig(name="lowrank"), backbone, spec)
    t = AVPretrainTask(AVPretrainConfig(**task), spec.num_classes, method.embed_dim)
    t.bind(method)
    g = torch.Generator().manual_seed(1)
    batch = {"video": torch.randn(6, 4, 3, 16, 16, generator=g), "audio": torch.randn(6, 1, 16, 32, generator=g),
             "id": [f"c{i}" for i in range(6)]}  # fmt: skip
    return method, t, batch


def test_trains_without_labels_and_both_objectives_reach_the_cnns():
    method, task, batch = build(negatives=3)
    assert "label" not in batch
    loss = task.loss(method(batch), batch)
    loss.backward()
    for part in ("tokens.patch.video", "tokens.patch.audio", "encoders"):
        grads = [p.grad for n, p in method.named_parameters() if n.startswith(part)]
        assert any(g is not None and g.abs().sum() > 0 for g in grads), part
    assert all(p.grad is not None for p in task.parameters())  # mask tokens, MEP heads, CPP head


def test_loss_is_the_weighted_sum_and_eval_scores_repeat():
    method, task, batch = build(negatives=3, mep_weight=0.7, cpp_weight=0.2)
    method.eval()
    out = method(batch)
    s1, s2 = task.scores(out, batch), task.scores(out, batch)
    assert torch.equal(s1, s2)  # masks and pairs seeded by the clip ids
    m = task.metrics(s1)
    assert m["loss"] == pytest.approx(0.7 * m["mep_loss"] + 0.2 * m["cpp_loss"], rel=1e-6)
    assert set(m) == {"mep_loss", "mep_acc", "cpp_loss", "cpp_acc", "loss"}
    audio_only = dict(batch, video_present=torch.zeros(6, dtype=torch.bool), audio_present=torch.ones(6, dtype=bool))
    assert "cpp_acc" not in task.metrics(task.scores(method(audio_only), audio_only))  # no pairs to judge


def test_bind_refuses_a_method_without_token_sequences():
    task = AVPretrainTask(AVPretrainConfig(), 5, 16)
    with pytest.raises(TypeError, match="encode_tokens"):
        task.bind(torch.nn.Linear(2, 2))
