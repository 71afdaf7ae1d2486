"""The dataset contract: a format turns validated parameters into splits that yield batches of the sample contract.

Every registered format (``FORMATS``: ``synthetic`` and the real-data formats of ``harness.data.formats``, or a plug-in
of the ``harness.formats`` group) subclasses :class:`Dataset`. A dataset card (``datasets/*.yaml``) names a format and
its parameters; ``harness.run.trial.build_dataset`` builds ``Format(params, cache_dir)``.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel

from harness.api.inputs import InputSpec


class Dataset:
    """A dataset of one format; the base declares what the core reads of it.

    Attributes:
        spec: the input shapes it yields.
        splits: ``{"train" | "val" | "test": split}``; a split has ``len()``, ``batches(batch_size, shuffle=False,
            seed=0, drop_last=False, shard=None)`` (``shard=(rank, world)``: that rank's part of every batch) and
            ``on_device(batch)``: a batch right after an engine moved it to the device, made into the sample contract
            there. The loaders may hand over cheaper forms than the contract's (the prepared datasets: ``video``
            uint8, pinned, and per-clip colour factors), so the per-pixel work runs on the accelerator; the in-memory
            splits' ``on_device`` is the identity.
        fingerprint: what the data is (a hash), for the runs' tags and the reports' provenance split.
    """

    Config: ClassVar[type[BaseModel]]
    spec: InputSpec
    splits: dict[str, Any]
    fingerprint: str

    def __init__(self, params: BaseModel, cache_dir):
        self.params = params

    @classmethod
    def input_spec(cls, params: BaseModel) -> InputSpec | None:
        """The shapes ``params`` give, computed without reading data; None when only the data can tell."""
        return None

    @classmethod
    def prepare(cls, params: BaseModel, cache_dir) -> Any:
        """Generate or decode the data ahead of the trials (a sweep's driver calls it once per distinct dataset)."""

    def provenance(self) -> dict[str, str]:
        """Tags that say which data a run used (``harness.dataset_fingerprint``; a prepared set adds more)."""
        return {"harness.dataset_fingerprint": self.fingerprint}


class DatasetError(ValueError):
    """Data that cannot be used as configured (an empty split, unreadable annotations); the message names the key
    or file and what to change. The CLI prints it without a traceback."""
