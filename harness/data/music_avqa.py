"""MUSIC-AVQA (Li et al., CVPR 2022, https://arxiv.org/abs/2203.14072): its question JSON, and ``synthetic_avqa``.

The release's ``avqa-{train,val,test}.json`` hold one entry per question: ``video_id``, ``question_id``, ``type`` (a
string holding a list, ``'["Audio-Visual", "Counting"]'``), ``question_content`` (a template such as ``"Is the
<Object> in the video always playing?"``), ``templ_values`` (a string holding the list of values for the template's
``<...>`` slots, in order) and ``anser`` (the answer; the release's spelling). As the baseline's loader
(GeWu-Lab/MUSIC-AVQA ``net_grd_avst/dataloader_avst.py``) reads them: the question is split on spaces, the last word
loses its last character (the question mark), each word holding ``<`` is replaced by the next template value; the
question vocabulary is ``<pad>`` then the training questions' words in order of first appearance, the answer
vocabulary the training answers in that order (42 in the release); questions are padded to 14 words.

``synthetic_avqa`` is the embedded default's clips (``harness.data.synthetic``, every object visible:
``idle_brightness`` 0.5) with one templated question each, in that JSON form, whose answer needs the audio, the
video or both:
- Audio / Counting: "How many times does the sound play?" (the sounding object's bursts; audio alone hears them);
- Visual / Location: "Is the <colour> object on the left or the right?" (video alone sees it);
- Audio-Visual / Existential: "Is the <colour> object making the sound?" (which object sounds: needs both);
- Audio-Visual / Location: "Is the sounding object on the left or the right?" (needs both).
Left / right: the object's mean x over the clip against the frame's centre.

Shapes: ``N`` clips, ``L`` = 14 question words.
"""

from __future__ import annotations

import ast
import os

import torch
from pydantic import Field

from harness.api import Dataset, InputSpec
from harness.data.base import TensorSplit
from harness.data.synthetic import SPLITS, SyntheticConfig, config_hash, generate

MAX_WORDS = 14  # the baseline's max_len
# The dataset's question types (modality, kind), in the order the baseline's test() reports them.
TYPES = (("Audio", "Counting"), ("Audio", "Comparative"), ("Visual", "Counting"), ("Visual", "Location"),
         ("Audio-Visual", "Existential"), ("Audio-Visual", "Counting"), ("Audio-Visual", "Location"),
         ("Audio-Visual", "Comparative"), ("Audio-Visual", "Temporal"))  # fmt: skip
COLOUR_NAMES = ("red", "green", "blue", "yellow", "cyan", "magenta")
NUMBERS = ("zero", "one", "two", "three", "four", "five")


def question_words(sample: dict) -> list[str]:
    """The question of one JSON entry as the baseline reads it: split, '?' dropped, ``<...>`` slots filled in order."""
    words = sample["question_content"].rstrip().split(" ")
    words[-1] = words[-1][:-1]
    values = iter(ast.literal_eval(sample["templ_values"]) if sample.get("templ_values") else [])
    return [next(values) if "<" in w else w for w in words]


def question_type(sample: dict) -> int:
    """Index in :data:`TYPES` of the entry's ``type``; -1 for a type the dataset's report does not list."""
    kind = tuple(ast.literal_eval(sample["type"]))
    return TYPES.index(kind) if kind in TYPES else -1


class Vocabulary:
    """Question words (``<pad>`` = 0) and answers of the training questions, each in order of first appearance."""

    def __init__(self, train: list[dict]):
        self.words, self.answers = ["<pad>"], []
        for sample in train:
            self.words += [w for w in dict.fromkeys(question_words(sample)) if w not in self.words]
            if sample["anser"] not in self.answers:
                self.answers.append(sample["anser"])
        self.word_index = {w: i for i, w in enumerate(self.words)}

    def encode(self, samples: list[dict]) -> torch.Tensor:
        """(N, 2 + 14) int64 labels of JSON entries: answer, type (:func:`question_type`), the 14 word ids.

        Raises:
            KeyError: a word or an answer the training questions do not have (the baseline fails the same way).
        """
        q = torch.zeros(len(samples), MAX_WORDS, dtype=torch.long)
        for i, s in enumerate(samples):
            ids = [self.word_index[w] for w in question_words(s)][:MAX_WORDS]
            q[i, : len(ids)] = torch.tensor(ids)
        answers = torch.tensor([self.answers.index(s["anser"]) for s in samples])
        types = torch.tensor([question_type(s) for s in samples])
        return torch.cat([answers[:, None], types[:, None], q], dim=1)


def synthetic_questions(cfg: SyntheticConfig, data: dict, split: str, seed: int) -> list[dict]:
    """One MUSIC-AVQA-style JSON entry per clip of ``data`` (``generate(..., latents=True, positions=True)``)."""
    g = torch.Generator().manual_seed(seed)
    n = data["video"].shape[0]
    kinds = torch.randint(0, 4, (n,), generator=g)
    pick = torch.randint(0, 2, (n,), generator=g)  # which object a colour question names
    side = lambda x: "left" if x < cfg.image_size / 2 else "right"  # noqa: E731
    out = []
    for i in range(n):
        colours, xs = data["colours"][i].tolist(), data["mean_x"][i].tolist()  # per object, object 0 sounds
        j = int(pick[i]) % len(colours)
        named = COLOUR_NAMES[colours[j]]
        k = int(kinds[i])
        if k == 0:
            q = ("How many times does the sound play?", [], ["Audio", "Counting"])
            answer = NUMBERS[int(data["sounding"][i].sum())]
        elif k == 1:
            q = ("Is the <Object> object on the left or the right?", [named], ["Visual", "Location"])
            answer = side(xs[j])
        elif k == 2:
            q = ("Is the <Object> object making the sound?", [named], ["Audio-Visual", "Existential"])
            answer = "yes" if j == 0 else "no"
        else:
            q = ("Is the sounding object on the left or the right?", [], ["Audio-Visual", "Location"])
            answer = side(xs[0])
        out.append({"video_id": f"{split}-{i}", "question_id": i, "type": repr(q[2]), "question_content": q[0],
                    "templ_values": repr(q[1]), "anser": answer})  # fmt: skip
    return out


class SyntheticAVQAConfig(SyntheticConfig):
    """The synthetic dataset's parameters, every object visible, 4 event slots (so burst counts vary)."""

    idle_brightness: float = Field(0.5, ge=0, le=1, description="brightness of an object outside its flashes")
    slots: int = Field(4, ge=2, description="event slots per clip; the sound plays in 1 .. slots // 2 of them")


class SyntheticAVQADataset(Dataset):
    """The ``synthetic_avqa`` format: clips + one question each; label (N, 16) = answer, type, question word ids.

    The vocabulary comes from the training questions (:class:`Vocabulary`); ``spec.num_classes`` is its answers.
    """

    Config = SyntheticAVQAConfig

    def __init__(self, params: SyntheticAVQAConfig, cache_dir: str | os.PathLike):
        super().__init__(params, cache_dir)
        data = generate(params, latents=True, positions=True)
        questions = {s: synthetic_questions(params, data[s], s, params.seed + k) for k, s in enumerate(SPLITS)}
        self.vocabulary = Vocabulary(questions["train"])
        self.questions = questions
        self.splits = {s: TensorSplit(s, data[s]["video"], data[s]["audio"], self.vocabulary.encode(questions[s]))
                       for s in SPLITS}  # fmt: skip
        self.spec = InputSpec(params.frames, params.image_size, params.n_mels, params.n_frames,
                              num_classes=len(self.vocabulary.answers))  # fmt: skip
        self.fingerprint = config_hash(params)
