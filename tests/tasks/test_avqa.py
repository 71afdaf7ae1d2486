"""``avqa`` (MUSIC-AVQA): the JSON's questions as the baseline reads them, accuracy per type counted by hand, a run."""

from __future__ import annotations

import ast

import pytest
import torch

from harness.config import RunSpec
from harness.data import music_avqa
from harness.data.music_avqa import Vocabulary, question_type, question_words
from harness.run.trial import run_trial
from harness.tasks import avqa
from harness.tasks.avqa import accuracy_per_type


def entry(content: str, values: str, kind: str, answer: str) -> dict:
    return {"video_id": "00000001", "question_id": 1, "type": kind, "question_content": content,
            "templ_values": values, "anser": answer}  # fmt: skip


TRAIN = [
    entry("Is the <Object> in the video always playing?", '["cello"]', '["Audio-Visual", "Temporal"]', "yes"),
    entry("Is the <Object> on the <LR> of the <Object>?", '["cello", "left", "piano"]', '["Visual", "Location"]', "no"),
    entry("How many sounding <Object> in the video?", '["instruments"]', '["Audio", "Counting"]', "two"),
]


def test_questions_are_read_as_the_baseline_reads_them():
    assert question_words(TRAIN[0]) == ["Is", "the", "cello", "in", "the", "video", "always", "playing"]
    assert question_words(TRAIN[1]) == ["Is", "the", "cello", "on", "the", "left", "of", "the", "piano"]
    assert [question_type(e) for e in TRAIN] == [8, 3, 0]
    vocab = Vocabulary(TRAIN)
    assert vocab.words[:8] == ["<pad>", "Is", "the", "cello", "in", "video", "always", "playing"]
    assert vocab.answers == ["yes", "no", "two"]
    labels = vocab.encode(TRAIN)
    assert labels.shape == (3, 16) and labels[:, 0].tolist() == [0, 1, 2] and labels[:, 1].tolist() == [8, 3, 0]
    assert labels[0, 2:].tolist() == [1, 2, 3, 4, 2, 5, 6, 7, 0, 0, 0, 0, 0, 0]
    assert music_avqa.TYPES == avqa.TYPES


def test_accuracy_per_type_equals_a_count_by_hand():
    # type index (avqa.TYPES): 0 A-Counting, 1 A-Comparative, 3 V-Location, 4 AV-Existential, 8 AV-Temporal
    types = torch.tensor([0, 0, 0, 1, 3, 3, 4, 4, 4, 8])
    right = torch.tensor([1, 1, 0, 1, 0, 1, 1, 0, 0, 1]).bool()
    answers = torch.arange(10)
    predicted = torch.where(right, answers, answers + 1)
    got = accuracy_per_type(predicted, answers, types)
    by_hand = {"acc": 6 / 10, "acc_audio": 3 / 4, "acc_visual": 1 / 2, "acc_av": 2 / 4,
               "acc_audio_counting": 2 / 3, "acc_audio_comparative": 1 / 1, "acc_visual_location": 1 / 2,
               "acc_av_existential": 1 / 3, "acc_av_temporal": 1 / 1}  # fmt: skip
    assert got == pytest.approx({k: 100 * v for k, v in by_hand.items()})


def test_synthetic_questions_need_the_stated_streams():
    cfg = music_avqa.SyntheticAVQAConfig(clips_train=64, clips_val=8, clips_test=8)
    data = music_avqa.generate(cfg, latents=True, positions=True)["train"]
    qs = music_avqa.synthetic_questions(cfg, data, "train", 0)
    for q, colours, sounding in zip(qs, data["colours"].tolist(), data["sounding"]):
        kind = tuple(ast.literal_eval(q["type"]))
        if kind == ("Audio", "Counting"):
            assert q["anser"] == music_avqa.NUMBERS[int(sounding.sum())]
        if kind == ("Audio-Visual", "Existential"):
            named = music_avqa.COLOUR_NAMES.index(ast.literal_eval(q["templ_values"])[0])
            assert q["anser"] == ("yes" if named == colours[0] else "no")
    assert {tuple(ast.literal_eval(q["type"])) for q in qs} == {music_avqa.TYPES[i] for i in (0, 3, 4, 6)}


def test_avqa_runs_on_synthetic_avqa(cache):
    run = {
        "name": "avqa_tiny",
        "seed": 0,
        "dataset": {"name": "synthetic_avqa", "clips_train": 48, "clips_val": 16, "clips_test": 16},
        "task": {"name": "avqa", "word_dim": 8, "hidden": 8},
        "backbone": {"name": "tiny", "embed_dim": 16, "depth": 2, "num_heads": 2, "patch_size": 16},
        "method": {"name": "mbt", "fusion_layer": 1, "bottleneck_tokens": 2},
        "train": {"epochs": 1, "batch_size": 8, "eval_batch_size": 16, "threads": 1},
        "cache_dir": str(cache),
    }
    final = run_trial(RunSpec.from_dict(run))
    for key in ("test/acc", "test/acc_audio", "test/acc_visual", "test/acc_av", "test/acc:video_only"):
        assert 0 <= final[key] <= 100, key
