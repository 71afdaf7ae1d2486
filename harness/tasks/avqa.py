"""``avqa`` (MUSIC-AVQA): an answer to a question about the clip, from the method's tokens; accuracy per question type.

Labels (B, 2 + 14) int64 (``harness.data.music_avqa``): the answer's index, the question type's index in
:data:`harness.data.music_avqa.TYPES` (-1: not reported per type) and the question's 14 word ids (0 = ``<pad>``).
The head follows the dataset's baseline (GeWu-Lab/MUSIC-AVQA ``net_grd_avst/net_avst.py``) on the method's tokens
instead of its ResNet-18 / VGGish features:
- question encoder: word embedding (``vocab_size`` x ``word_dim``) and an LSTM; its last hidden state -> D (tanh),
  the vocabulary built from the training questions by the dataset, nothing downloaded;
- spatial grounding: per video time step, the audio of that step (the mean of its audio tokens, by
  ``TokenLayout.audio_time``) attends over the frame's patch tokens (softmax of dot products), giving one visual
  vector per step; a method without audio tokens uses the frame's mean;
- temporal grounding: the question attends over the steps of the grounded visual and of the audio sequence;
- answer: tanh(Linear([audio; visual])) * question -> tanh(Linear) -> Linear(num_answers) (MUSIC-AVQA: 42), CE.
Known differences from the baseline: no audio-visual matching loss with negative frames, no pretrained grounding
weights, one attention head per grounding instead of its multi-head attention and FFN.

Metrics (percent), as the baseline's ``test()`` reports them (counts pooled within a group, not averaged over types):
``acc_<modality>_<kind>`` for each type present, ``acc_audio`` / ``acc_visual`` / ``acc_av`` over each modality's
questions, and ``acc`` over all questions.

Shapes: ``B`` questions, ``T`` video time steps, ``N`` patches per step, ``Na`` audio tokens, ``D`` token width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from harness.api.task import Task, TaskConfig

# The dataset's question types (modality, kind), in the baseline's report order; label column 1 indexes them. The same
# tuple as harness.data.music_avqa.TYPES (tasks and data are independent packages; tests/tasks/test_avqa.py checks).
TYPES = (("Audio", "Counting"), ("Audio", "Comparative"), ("Visual", "Counting"), ("Visual", "Location"),
         ("Audio-Visual", "Existential"), ("Audio-Visual", "Counting"), ("Audio-Visual", "Location"),
         ("Audio-Visual", "Comparative"), ("Audio-Visual", "Temporal"))  # fmt: skip
GROUPS = {"audio": "Audio", "visual": "Visual", "av": "Audio-Visual"}  # metric prefix -> the dataset's modality
GROUPS_BY_NAME = {v: k for k, v in GROUPS.items()}


def type_key(t: tuple[str, str]) -> str:
    """The metric of one question type: ``acc_av_existential`` for ("Audio-Visual", "Existential")."""
    return f"acc_{GROUPS_BY_NAME[t[0]]}_{t[1].lower()}"


def accuracy_per_type(predicted: Tensor, answers: Tensor, types: Tensor) -> dict[str, float]:
    """The baseline's per-type, per-modality (pooled) and overall accuracies in percent; absent types left out."""
    hit = (predicted == answers).float()
    out = {"acc": 100.0 * hit.mean().item()}
    for g, name in GROUPS.items():
        members = [i for i, t in enumerate(TYPES) if t[0] == name]
        mask = torch.isin(types, torch.tensor(members))
        if mask.any():
            out[f"acc_{g}"] = 100.0 * hit[mask].mean().item()
    for i, t in enumerate(TYPES):
        if (types == i).any():
            out[type_key(t)] = 100.0 * hit[types == i].mean().item()
    return out


class AVQAConfig(TaskConfig):
    """Keys under ``task:`` for ``avqa``."""

    vocab_size: int = Field(512, ge=2, description="rows of the word embedding; >= the training questions' words")
    word_dim: int = Field(64, ge=8, description="word embedding width (the baseline: 512)")
    hidden: int = Field(64, ge=8, description="LSTM and fusion width (the baseline: 512)")


class AVQATask(Task):
    """Question encoder + audio-visual grounding over the method's tokens + an answer head; per-type accuracy."""

    Config = AVQAConfig
    primary_metric = "acc"
    token_modalities = ("video",)  # the grounding needs video tokens; audio tokens when the method has them

    def __init__(self, cfg: AVQAConfig, num_classes: int, embed_dim: int):
        super().__init__(cfg, num_classes, embed_dim)
        self.embed = nn.Embedding(cfg.vocab_size, cfg.word_dim, padding_idx=0)
        self.lstm = nn.LSTM(cfg.word_dim, cfg.hidden, batch_first=True)
        self.layout = None

    def bind(self, method: nn.Module) -> None:
        name = getattr(method.cfg, "name", type(method).__name__)
        if not getattr(method, "token_outputs", False) or method.token_layout().video is None:
            raise ValueError(f"task avqa grounds the question in a method's video tokens; method {name!r} has none")
        self.layout = layout = method.token_layout()
        d, h = layout.video[-1], self.cfg.hidden
        self.question = nn.Linear(h, d)
        self.fusion = nn.Linear(2 * d, d)
        self.answer = nn.Sequential(nn.Linear(d, h), nn.Tanh(), nn.Linear(h, self.num_classes))
        if layout.audio is not None:  # audio token -> video time step, for the per-step audio
            t, steps = layout.video[0], max(layout.audio_steps, 1)
            step = torch.tensor(layout.audio_time) * t // steps  # (Na,)
            self.register_buffer("audio_step", F.one_hot(step, t).float(), persistent=False)  # (Na, T)

    def encode_question(self, words: Tensor) -> Tensor:
        """(B, L) word ids -> (B, D): tanh of the last LSTM state (at each question's last word)."""
        if words.device.type == "meta":  # the FLOP count (harness.models.complexity): every question full length
            lengths = torch.full((words.shape[0],), words.shape[1])
        else:  # pack_padded_sequence takes the lengths on the host
            lengths = (words != 0).sum(1).clamp(min=1).cpu()
        packed = nn.utils.rnn.pack_padded_sequence(self.embed(words), lengths, batch_first=True, enforce_sorted=False)
        _, (h, _) = self.lstm(packed)
        return torch.tanh(self.question(h[-1]))

    def logits(self, out: dict, batch: dict | None = None) -> Tensor:
        if self.layout is None:
            raise RuntimeError("AVQATask.bind(method) builds the head; call it before the first forward")
        video = out["tokens"]["video"]  # (B, T, N, D)
        b, t, _, d = video.shape
        label = None if batch is None else batch["label"]
        if label is None or label.dim() != 2 or label.is_floating_point():  # the FLOP counts' examples: pads
            words = torch.zeros(b, 14, dtype=torch.long, device=video.device)
        else:
            words = label[:, 2:].to(video.device)
        q = self.encode_question(words)  # (B, D)
        audio = out["tokens"].get("audio")
        if audio is not None:
            w = self.audio_step / self.audio_step.sum(0).clamp(min=1)  # (Na, T): mean over a step's tokens
            a = torch.einsum("bnd,nt->btd", audio, w)  # (B, T, D) audio per video step
            attn = torch.einsum("btd,btnd->btn", a, video).div(d**0.5).softmax(-1)  # audio-guided spatial grounding
            v = torch.einsum("btn,btnd->btd", attn, video)  # (B, T, D)
        else:
            a, v = video.new_zeros(b, t, d), video.mean(2)

        def ground(x: Tensor) -> Tensor:  # question-guided temporal attention: (B, T, D) -> (B, D)
            return torch.einsum("bt,btd->bd", torch.einsum("bd,btd->bt", q, x).div(d**0.5).softmax(-1), x)

        fused = torch.tanh(self.fusion(torch.cat([ground(a), ground(v)], dim=-1))) * q  # (B, D)
        return self.answer(fused)  # (B, A)

    def loss(self, out: dict, batch: dict) -> Tensor:
        return self.example_loss(self.logits(out, batch), batch["label"]).mean()

    def example_loss(self, logits: Tensor, target: Tensor) -> Tensor:
        if target.is_floating_point():  # soft targets shaped like the logits: the training-FLOP count's example
            return F.cross_entropy(logits.float(), target.to(logits.device), reduction="none")
        answer = target[:, 0].to(logits.device)
        return F.cross_entropy(logits.float(), answer, label_smoothing=self.cfg.label_smoothing, reduction="none")

    def soft_targets(self, label: Tensor) -> Tensor:
        raise ValueError("task avqa does not support mixup (its labels carry the question); set train.mixup_alpha=0")

    @torch.no_grad()
    def metrics(self, scores: Tensor, labels: Tensor) -> dict[str, float]:
        return accuracy_per_type(scores.argmax(-1), labels[:, 0], labels[:, 1])
