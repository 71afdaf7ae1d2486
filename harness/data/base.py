"""A split held in memory as tensors and served as batches of the sample contract (``harness.api.inputs``)."""

from __future__ import annotations


class TensorSplit:
    """One split held in memory as stacked tensors, served as ready batches (no per-sample collation).

    Video is stored as uint8 and normalised per batch to [-1, 1] (MBT's ``zero_centering``); audio is stored as
    the normalised log-mel (float16) and served as float32.

    Args:
        name: the split's name (``train``, ``val``, ``test``); clip ids are ``<name>-<index>``.
        video: uint8 (N, T, 3, H, W).
        audio: (N, 1, n_mels, n_frames).
        label: (N,) int64.
    """

    def __init__(self, name: str, video, audio, label):
        self.name, self.video, self.audio, self.label = name, video, audio, label

    def __len__(self) -> int:
        return int(self.label.shape[0])

    @staticmethod
    def on_device(batch: dict) -> dict:
        """Its batches are the sample contract already (``harness.api.Dataset``: a split's ``on_device``)."""
        return batch

    def batches(self, batch_size: int, shuffle: bool = False, seed: int = 0, drop_last: bool = False,
                shard: tuple[int, int] | None = None):  # fmt: skip
        """Yield batches (the sample contract of ``harness.api.inputs``, stacked) in a seeded order.

        ``shard=(rank, world)`` yields only rank's contiguous part of each batch (``batch_size`` is then the
        global batch), so that data-parallel workers together see exactly the batches of one process.
        """
        import torch

        n = len(self)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)) if shuffle else torch.arange(n)
        stop = n - n % batch_size if drop_last and n >= batch_size else n
        for start in range(0, stop, batch_size):
            idx = order[start : start + batch_size]
            if shard is not None:
                idx = idx.tensor_split(shard[1])[shard[0]]
            b = idx.shape[0]
            yield {
                "video": self.video[idx].float().div_(127.5).sub_(1.0),  # (B, T, 3, H, W) in [-1, 1]
                "audio": self.audio[idx].float(),  # (B, 1, n_mels, n_frames)
                "label": self.label[idx],
                "id": [f"{self.name}-{i}" for i in idx.tolist()],
                "audio_present": torch.ones(b, dtype=torch.bool),
                "video_present": torch.ones(b, dtype=torch.bool),
            }
