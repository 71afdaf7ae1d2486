"""The declared contracts between the harness's parts: import what a method, task or engine needs from here.

- the sample and batch, :class:`InputSpec` (``harness.api.inputs``), :class:`Dataset` (``harness.api.data``): what
  every format of ``harness.data`` (and each ``harness.formats`` plug-in) is and yields;
- the missing-modality masks (``harness.api.modalities``): what methods and tasks honour;
- per-segment scoring (``harness.api.segments``): a clip of S (frame(s), audio window) pairs run as S mini-clips;
- token-level access (``harness.api.sequences``): :class:`TokenSequences`, what self-supervised tasks mask and re-pair;
- :class:`FusionMethod`, :class:`MethodConfig` (``harness.api.method``): ``methods/`` and ``harness.methods`` plug-ins;
- :class:`Task`, :class:`TaskConfig` (``harness.api.task``): ``harness.tasks`` and ``harness.tasks`` plug-ins;
- :class:`Engine`, :class:`Reporter`, :class:`Checkpoints`, :class:`TrainHook` (``harness.api.engine``): the
  engines of ``harness.run.engines``, the reporters of ``harness.run`` and ``harness.tracking``.

This package imports nothing else of the harness (``tests/test_layering.py`` holds it to that).
"""

from harness.api.data import Dataset, DatasetError
from harness.api.engine import Checkpoints, Engine, Reporter, TrainHook
from harness.api.inputs import InputSpec
from harness.api.method import CheckpointError, FusionMethod, MethodConfig, StageLayout, TokenLayout, token_outputs
from harness.api.modalities import (
    COMPLETE,
    attn_mask,
    complete,
    keep_keys,
    mark_complete,
    mean_over_modalities,
    modality_weights,
    present_masks,
    stream_masks,
)
from harness.api.segments import check_segments, score_per_segment, segment_spec
from harness.api.sequences import TokenSequences
from harness.api.task import Task, TaskConfig, Tree, average_views, tree_map

__all__ = [
    "COMPLETE",
    "CheckpointError",
    "Checkpoints",
    "Dataset",
    "DatasetError",
    "Engine",
    "FusionMethod",
    "InputSpec",
    "MethodConfig",
    "Reporter",
    "StageLayout",
    "Task",
    "TaskConfig",
    "TokenSequences",
    "TokenLayout",
    "TrainHook",
    "Tree",
    "attn_mask",
    "complete",
    "average_views",
    "check_segments",
    "keep_keys",
    "mark_complete",
    "mean_over_modalities",
    "modality_weights",
    "present_masks",
    "score_per_segment",
    "segment_spec",
    "stream_masks",
    "token_outputs",
    "tree_map",
]
