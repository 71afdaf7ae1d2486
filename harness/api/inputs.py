"""The sample contract: what every dataset yields and what every method and task reads.

A sample: ``video`` float (T, 3, H, W) normalised; ``audio`` float (1, n_mels, n_frames) log-mel; ``label`` (int for
single-label; multi-hot float (C,) for multi-label; (S,) ints per segment for localisation; a dict of heads for a
multi-head task); ``id`` str. A batch stacks them (``id`` a list) and adds ``audio_present`` / ``video_present`` bool
(B,) masks, which every method honours (:mod:`harness.api.modalities`). The views of one clip in a multi-view test
split share its ``id``. A clip with ``segments`` S > 0 is S consecutive (frame(s), audio window) pairs, each labelled:
frames [s T/S, (s + 1) T/S) and spectrogram columns [s F/S, (s + 1) F/S) are segment s; a per-segment task runs the
method on each pair (:mod:`harness.api.segments`). ``docs/internals.md`` has the whole table.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class InputSpec:
    """Shapes a dataset yields; the backbone's tokenisers are built from it.

    Attributes:
        frames: T, video frames per clip.
        image_size: H = W of each frame.
        n_mels: frequency bins of the log-mel spectrogram (its height).
        n_frames: time frames of the spectrogram (its width).
        num_classes: number of classes of the dataset's default task (for a multi-head task: all heads' together).
        segments: S, labels per clip for localisation (AVE: 10 one-second segments), each for frames T/S and
            n_frames/S of the clip in order; 0 = one label per clip.
        heads: ``(("verb", 97), ("noun", 300))``: name and classes of each head of a multi-head task; () = one.
        clips: K, short clips per sample: a long video as K consecutive clips, clip k being frames [k T/K, (k + 1)
            T/K) and spectrogram columns [k F/K, (k + 1) F/K); a ``backbone.family: cnn`` front end embeds each
            (AVBERT's clip sequences). 1 = one clip; the ViT tokenisers ignore it.
    """

    frames: int
    image_size: int
    n_mels: int
    n_frames: int
    num_classes: int
    segments: int = 0
    heads: tuple[tuple[str, int], ...] = ()
    clips: int = 1

    def to_dict(self) -> dict:
        return asdict(self)
