"""What every dataset gives the rest of the harness: its input spec and batches of samples.

A sample (DESIGN.md): ``video`` float (T, 3, H, W) normalised, ``audio`` float (1, n_mels, n_frames) log-mel,
``label`` int, ``id`` str. A batch stacks them and adds ``audio_present`` / ``video_present`` bool (B,) masks.
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
        num_classes: number of classes of the dataset's default task.
    """

    frames: int
    image_size: int
    n_mels: int
    n_frames: int
    num_classes: int

    def to_dict(self) -> dict:
        return asdict(self)
