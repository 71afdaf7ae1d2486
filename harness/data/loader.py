"""The real datasets' loader: a ``torch.utils.data.DataLoader`` over a split's samples, one per split, kept open.

A split decides the epoch (which items, in which order, which rank gets which part of every global batch); the
loader only turns each group of items into a batch in its worker processes (``loader_workers``; 0 = in the trial's
process), ``loader_prefetch`` batches ahead per worker, pinned where CUDA is there (``pin_memory``). The workers
persist across epochs: every ``batches`` call hands the same DataLoader the next epoch's groups through
:class:`Groups`, so their start-up (and the shards they have open) is paid once per trial. An item carries its own
draw seed, so a worker needs no epoch state and any worker's batch is the same.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch.utils.data import DataLoader, Sampler


class Groups(Sampler):
    """A batch sampler whose groups (lists of items) are set before every epoch."""

    def __init__(self):
        self.groups: list[list] = []

    def __iter__(self) -> Iterator[list]:
        return iter(self.groups)

    def __len__(self) -> int:
        return len(self.groups)


class _Samples(torch.utils.data.Dataset):
    def __init__(self, sample: Callable):
        self.sample = sample

    def __getitem__(self, item):
        return self.sample(item)


class SplitLoader:
    """A DataLoader of ``sample(item) -> dict`` and ``collate(list[dict]) -> batch``, reused across epochs."""

    def __init__(self, sample: Callable, collate: Callable, workers: int = 0, prefetch: int = 2, pin: bool = True):
        self.groups = Groups()
        extra = {"persistent_workers": True, "prefetch_factor": prefetch} if workers else {}
        self.make = lambda: DataLoader(_Samples(sample), batch_sampler=self.groups, num_workers=workers,
                                       collate_fn=collate, pin_memory=pin and torch.cuda.is_available(),
                                       **extra)  # fmt: skip
        self.loader: DataLoader | None = None

    def __call__(self, groups: list[list]) -> Iterator[dict]:
        """The batches of ``groups``, in order."""
        self.groups.groups = groups
        if groups:
            self.loader = self.loader or self.make()
            yield from self.loader

    def close(self) -> None:
        """Stop the persistent workers now: the DataLoader's last reference goes, its iterator shuts them down here
        (left to the collector, a process forked later for another loader may try it, in vain). The next call
        starts new ones."""
        self.loader = None
