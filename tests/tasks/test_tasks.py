"""Tasks: losses and metrics on hand-computed examples, mAP/AUC against brute-force references, multi-view averaging."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from scipy.stats import mannwhitneyu

from harness.api import InputSpec, average_views
from harness.config import RunSpec
from harness.registry import METHODS, TASKS
from harness.run.engines.torch_engine import TorchEngine
from harness.tasks.classification import ClassificationTask
from harness.tasks.localization import LocalizationTask
from harness.tasks.multihead import MultiheadTask
from harness.tasks.multilabel import MultilabelTask, average_precision, roc_auc


def _task(cls, num_classes: int, dim: int = 4, **cfg):
    torch.manual_seed(0)
    return cls(cls.Config(**cfg), num_classes, dim)


def test_every_task_is_registered():
    for name in ("classification", "multilabel", "localization", "multihead"):
        assert issubclass(TASKS.get(name).Config, TASKS.get("classification").Config.__base__)


# --- classification ---------------------------------------------------------------------------------------------


def test_classification_metrics_by_hand():
    task = _task(ClassificationTask, 6)
    scores = torch.tensor([[0.0, 1, 2, 3, 4, 5], [5, 4, 3, 2, 1, 0], [0, 8, 9, 0, 0, 0]])
    labels = torch.tensor([5, 5, 1])  # ranks 1, 6 and 2
    m = task.metrics(scores, labels)
    assert m["top1"] == pytest.approx(100 / 3)
    assert m["top5"] == pytest.approx(200 / 3)


@pytest.mark.parametrize("ls", [0.0, 0.3])
def test_soft_target_ce_equals_hard(ls):
    task = _task(ClassificationTask, 5, label_smoothing=ls)
    z, y = torch.randn(7, 5), torch.randint(0, 5, (7,))
    hard = task.example_loss(z, y)
    soft = task.example_loss(z, task.soft_targets(y))
    by_hand = -((1 - ls) * F.one_hot(y, 5) + ls / 5).mul(z.log_softmax(-1)).sum(-1)
    torch.testing.assert_close(hard, soft)
    torch.testing.assert_close(hard, by_hand)


def test_per_modality_targets_and_masks():
    """Each modality's logits are trained on ``label:<m>``; a clip's absent modality adds no loss."""
    task = _task(ClassificationTask, 3)
    e = {"audio": torch.randn(2, 4), "video": torch.randn(2, 4)}
    y = torch.tensor([0, 2])
    ya, yv = torch.tensor([[0.5, 0.5, 0.0], [0, 0, 1]]), torch.tensor([[1.0, 0, 0], [0, 0.2, 0.8]])
    batch = {"audio": torch.zeros(2, 1), "video": torch.zeros(2, 1), "label": y, "label:audio": ya, "label:video": yv,
             "audio_present": torch.tensor([True, False]), "video_present": torch.tensor([True, True])}  # fmt: skip
    out = {"embedding": e["audio"], "per_modality": e}
    la, lv = (task.example_loss(task.head(e[m]), t) for m, t in (("audio", ya), ("video", yv)))
    expected = ((la[0] + lv[0]) / 2 + lv[1]) / 2
    torch.testing.assert_close(task.loss(out, batch), expected)
    # evaluation: mean of the present modalities' logits
    z = task.logits(out, batch)
    torch.testing.assert_close(z[1], task.head(e["video"][1]))


# --- multilabel -------------------------------------------------------------------------------------------------


def _ap_brute(s: list[float], y: list[int]) -> float:
    """sklearn's definition, threshold by threshold: sum (R_k - R_{k-1}) P_k over distinct scores, high to low."""
    p, ap, prev_r = sum(y), 0.0, 0.0
    for t in sorted(set(s), reverse=True):
        pred = [si >= t for si in s]
        tp = sum(1 for pi, yi in zip(pred, y) if pi and yi)
        r, prec = tp / p, tp / sum(pred)
        ap += (r - prev_r) * prec
        prev_r = r
    return ap


def _auc_pairs(s: list[float], y: list[int]) -> float:
    pos = [a for a, b in zip(s, y) if b]
    neg = [a for a, b in zip(s, y) if not b]
    return sum((a > b) + 0.5 * (a == b) for a in pos for b in neg) / (len(pos) * len(neg))


def test_ap_and_auc_by_hand():
    s, y = torch.tensor([[0.9], [0.8], [0.7], [0.6]]), torch.tensor([[1.0], [0], [1], [0]])
    assert average_precision(s, y).item() == pytest.approx((1 + 2 / 3) / 2)
    assert roc_auc(s, y).item() == pytest.approx(3 / 4)


def test_ap_and_auc_match_references_on_random_data_with_ties():
    g = torch.Generator().manual_seed(0)
    scores = (torch.rand(60, 9, generator=g) * 8).round() / 8  # many ties
    labels = (torch.rand(60, 9, generator=g) < 0.3).float()
    labels[:, 0] = 0  # a class without positives
    labels[:, 1] = 1  # a class without negatives
    ap, auc = average_precision(scores, labels), roc_auc(scores, labels)
    assert math.isnan(ap[0]) and math.isnan(auc[0]) and math.isnan(auc[1])
    for c in range(1, 9):
        s, y = scores[:, c].tolist(), labels[:, c].int().tolist()
        assert ap[c].item() == pytest.approx(_ap_brute(s, y), abs=1e-12), c
        if c >= 2:
            assert auc[c].item() == pytest.approx(_auc_pairs(s, y), abs=1e-12), c
            u = mannwhitneyu([a for a, b in zip(s, y) if b], [a for a, b in zip(s, y) if not b]).statistic
            assert auc[c].item() == pytest.approx(u / (sum(y) * (len(y) - sum(y))), abs=1e-12)
    m = MultilabelTask(MultilabelTask.Config(), 9, 4).metrics(scores, labels)
    assert m["map"] == pytest.approx(100 * ap[1:].mean().item())  # the class without positives is ignored
    assert m["auc"] == pytest.approx(100 * auc[2:].mean().item())


def test_multilabel_loss_and_scores():
    task = _task(MultilabelTask, 4, label_smoothing=0.2)
    z, y = torch.randn(3, 4), (torch.rand(3, 4) < 0.5).float()
    t = y * 0.8 + 0.2 / 4  # scenic's apply_label_smoothing
    by_hand = -(t * F.logsigmoid(z) + (1 - t) * F.logsigmoid(-z)).mean(1)
    torch.testing.assert_close(task.example_loss(z, y), by_hand)
    summed = _task(MultilabelTask, 4, label_smoothing=0.2)
    summed.loss_reduction = "sum"  # train.loss_reduction: sum (scenic); set by the trial's build_model
    torch.testing.assert_close(summed.example_loss(z, y), by_hand * 4)
    out = {"embedding": torch.randn(3, 4)}
    torch.testing.assert_close(task.scores(out), task.logits(out).sigmoid())  # views average probabilities


def test_sum_over_classes_is_scenics_weighted_sigmoid_cross_entropy():
    """scenic ``model_utils.weighted_sigmoid_cross_entropy`` written out (MBT's AudioSet loss): label smoothing, then
    -(t log σ(z) + (1 - t) log σ(-z)) summed over every class and clip, divided by the number of clips
    (``train.loss_reduction: sum``)."""
    task = _task(MultilabelTask, 527, label_smoothing=0.3)
    task.loss_reduction = "sum"  # train.loss_reduction: sum, set by the trial's build_model
    emb, y = torch.randn(5, 4), (torch.rand(5, 527) < 0.02).float()
    z = task.head(emb).detach()
    t = y * (1 - 0.3) + 0.3 / 527  # apply_label_smoothing
    scenic = (-(t * F.logsigmoid(z) + (1 - t) * F.logsigmoid(-z))).sum() / (5 + 1e-8)
    torch.testing.assert_close(task.loss({"embedding": emb}, {"label": y}), scenic)
    mean = _task(MultilabelTask, 527, label_smoothing=0.3)  # the default: torch's / AST's mean over classes
    mean.load_state_dict(task.state_dict())
    torch.testing.assert_close(mean.loss({"embedding": emb}, {"label": y}) * 527, scenic)


# --- localization -----------------------------------------------------------------------------------------------


def test_seg_acc_by_hand():
    task = _task(LocalizationTask, 3, segments=2)
    scores = torch.tensor([[[0.0, 1, 0], [2, 0, 0]], [[0, 0, 1], [0, 1, 0]]])  # argmax [[1, 0], [2, 1]]
    labels = torch.tensor([[1, 0], [2, 2]])
    assert task.metrics(scores, labels)["seg_acc"] == pytest.approx(75.0)


def test_localization_broadcasts_clip_embeddings_and_takes_per_segment_ones():
    task = _task(LocalizationTask, 29, dim=8, segments=10, hidden=16)
    clip = task.logits({"embedding": torch.randn(2, 8)})
    assert clip.shape == (2, 10, 29) and torch.equal(clip[:, 0], clip[:, 9])
    seg = task.logits({"embedding": torch.randn(2, 10, 8)})
    assert seg.shape == (2, 10, 29) and not torch.equal(seg[:, 0], seg[:, 9])
    y = torch.randint(0, 29, (2, 10))
    by_hand = F.cross_entropy(seg.reshape(20, 29), y.reshape(20), reduction="none").view(2, 10).mean(1)
    torch.testing.assert_close(task.example_loss(seg, y), by_hand)
    torch.testing.assert_close(task.example_loss(seg, task.soft_targets(y)), by_hand)
    with pytest.raises(ValueError, match="labels have 5 segments.*task.segments=5"):
        task.example_loss(seg, y[:, :5])


def test_lavish_ave_head_and_loss_equal_the_code():
    """GenjiB/LAVISH ``AVE/nets/net_trans.py`` ``forward_vit`` + ``AVE/main_trans.py`` written out: out_av =
    cat((a_cls, v_cls), -1) over the (b t) pairs, p = softmax(mlp_class_2(mlp_class(out_av))), nn.BCELoss()(p, GT)."""
    d, classes = 8, 29
    task = _task(LocalizationTask, classes, dim=d, segments=10, hidden=512, head_input="concat", loss="bce_softmax")
    fc1, fc2 = task.head[0], task.head[1]
    assert (fc1.in_features, fc1.out_features, fc2.out_features) == (2 * d, 512, classes)
    a, v = torch.randn(3, 10, d), torch.randn(3, 10, d)
    out = {"embedding": (a + v) / 2, "per_modality": {"audio": a, "video": v}}
    gt = torch.randint(0, classes, (3, 10))
    out_av = torch.cat((a, v), dim=-1).reshape(30, 2 * d)  # rearrange(out_av, 'b t p -> (b t) p')
    p_av = F.softmax(fc2(fc1(out_av)), dim=-1)
    torch.testing.assert_close(task.logits(out).reshape(30, classes).softmax(-1), p_av)
    official = torch.nn.BCELoss()(p_av, F.one_hot(gt, classes).float().reshape(30, classes))
    clips = {"label": gt, "audio": torch.zeros(3, 1, 4, 4), "video": torch.zeros(3, 1, 3, 4, 4)}  # both present
    torch.testing.assert_close(task.loss(out, clips), official)
    # an absent modality's half of [a; v] is 0; a method without per-modality embeddings is refused
    batch = {
        "label": gt,
        "audio": torch.zeros(3),
        "video": torch.zeros(3),
        "audio_present": torch.tensor([1, 0, 1]).bool(),
    }
    masked = task.logits(out, batch)
    torch.testing.assert_close(masked[1], fc2(fc1(torch.cat((torch.zeros_like(a[1]), v[1]), dim=-1))))
    with pytest.raises(ValueError, match="head_input=concat needs per-modality"):
        task.logits({"embedding": a})


# --- multihead --------------------------------------------------------------------------------------------------


def test_action_accuracy_is_the_joint_argmax():
    task = _task(MultiheadTask, 6, heads={"verb": 3, "noun": 3})
    lg = torch.tensor([0.5, 0.4, 0.1]).log()  # the same softmax for both heads of every clip
    scores = {"verb": lg.expand(3, 3), "noun": lg.expand(3, 3)}
    labels = {"verb": torch.tensor([0, 0, 1]), "noun": torch.tensor([0, 1, 2])}
    m = task.metrics(scores, labels)
    assert m["verb_top1"] == pytest.approx(200 / 3) and m["noun_top1"] == pytest.approx(100 / 3)
    # clip 1: verb right, noun wrong -> no action hit; only clip 0's pair (0, 0) is the joint argmax
    assert m["action_top1"] == pytest.approx(100 / 3)
    # joint top-5 of 0.5/0.4/0.1 x 0.5/0.4/0.1: (0,0) .25 (0,1) .2 (1,0) .2 (1,1) .16 then .05s: (1, 2) = .04 is out,
    # although verb 1 and noun 2 are each in their head's top-5
    assert m["verb_top5"] == m["noun_top5"] == 100.0
    assert m["action_top5"] == pytest.approx(200 / 3)


def test_multihead_loss_and_heads():
    task = _task(MultiheadTask, 397)
    assert set(task.heads) == {"verb", "noun"} and task.primary_metric == "action_top1"
    z = task.head_logits(torch.randn(4, 4))
    assert z["verb"].shape == (4, 97) and z["noun"].shape == (4, 300)
    y = {"verb": torch.randint(0, 97, (4,)), "noun": torch.randint(0, 300, (4,))}
    by_hand = (F.cross_entropy(z["verb"], y["verb"], reduction="none")
               + F.cross_entropy(z["noun"], y["noun"], reduction="none")) / 2  # fmt: skip
    torch.testing.assert_close(task.example_loss(z, y), by_hand)
    torch.testing.assert_close(task.example_loss(z, task.soft_targets(y)), by_hand)
    per = {"audio": torch.randn(4, 4), "video": torch.randn(4, 4)}
    mean = task.logits({"embedding": per["audio"], "per_modality": per})
    torch.testing.assert_close(mean["noun"], (task.heads["noun"](per["audio"]) + task.heads["noun"](per["video"])) / 2)
    with pytest.raises(ValueError, match="task.heads .* sum to 397 .* num_classes=300"):
        MultiheadTask(MultiheadTask.Config(), 300, 4)


# --- multi-view evaluation --------------------------------------------------------------------------------------


def test_average_views():
    scores = torch.tensor([[1.0, 0.0], [0.0, 4.0], [3.0, 0.0], [5.0, 5.0]])
    labels = torch.tensor([0, 1, 0, 1])
    s, y = average_views(scores, labels, ["a", "b", "a", "c"])
    torch.testing.assert_close(s, torch.tensor([[2.0, 0.0], [0.0, 4.0], [5.0, 5.0]]))
    assert y.tolist() == [0, 1, 1]
    d, yd = average_views({"verb": scores}, {"verb": labels}, ["a", "b", "a", "c"])
    torch.testing.assert_close(d["verb"], s)
    with pytest.raises(ValueError, match="clip id 'a' have different labels"):
        average_views(scores, torch.tensor([0, 1, 1, 1]), ["a", "b", "a", "c"])


class _ViewSplit:
    """A test split: fixed clips served as two views each (the second view's video is noise) under shared ids."""

    def __init__(self, spec: InputSpec, n: int):
        g = torch.Generator().manual_seed(1)
        video = torch.randn(n, spec.frames, 3, spec.image_size, spec.image_size, generator=g)
        self.video = torch.cat([video, video + torch.randn(video.shape, generator=g)])
        self.audio = torch.randn(n, 1, spec.n_mels, spec.n_frames, generator=g).repeat(2, 1, 1, 1)
        self.label = torch.randint(0, spec.num_classes, (n,), generator=g).repeat(2)
        self.ids = [f"clip-{i}" for i in range(n)] * 2

    @staticmethod
    def on_device(batch: dict) -> dict:
        return batch

    def batches(self, batch_size: int, **_):
        for s in range(0, len(self.ids), batch_size):
            b = len(self.ids[s : s + batch_size])
            yield {"video": self.video[s : s + b], "audio": self.audio[s : s + b], "label": self.label[s : s + b],
                   "id": self.ids[s : s + b], "audio_present": torch.ones(b, dtype=torch.bool),
                   "video_present": torch.ones(b, dtype=torch.bool)}  # fmt: skip


def test_engine_evaluate_averages_the_views_of_one_id(tiny_run):
    tiny_run["method"] = {"name": "late"}
    tiny_run["train"]["eval_batch_size"] = 5  # views of one clip land in different batches
    spec = RunSpec.from_dict(tiny_run)
    inp = InputSpec(frames=4, image_size=32, n_mels=32, n_frames=64, num_classes=10)  # the synthetic default
    torch.manual_seed(0)
    method = METHODS.get("late").build(spec.method, spec.backbone, inp).eval()
    task = ClassificationTask(ClassificationTask.Config(), 10, method.embed_dim)
    split = _ViewSplit(inp, 6)
    seen = []  # what the engine hands to the task's metrics
    metrics = task.metrics
    task.metrics = lambda s, y: seen.append((s, y)) or metrics(s, y)
    got = TorchEngine(spec, "cpu").evaluate(method, task, split)
    with torch.no_grad():
        batch = next(split.batches(12))
        z = task.logits(method(batch), batch)  # (12, C): views 0..5 then their second views
    averaged = (z[:6] + z[6:]) / 2
    assert not torch.allclose(z[:6], z[6:])  # the views really differ
    torch.testing.assert_close(seen[0][0], averaged)
    assert torch.equal(seen[0][1], split.label[:6])
    assert got == pytest.approx(metrics(averaged, split.label[:6]))
