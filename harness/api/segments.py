"""Per-segment scoring: a clip of S (frame(s), audio window) pairs, each run through the method as a clip of its own.

A dataset whose ``InputSpec.segments`` is S > 0 yields clips that split into S equal consecutive segments: segment s
is video frames [s T/S, (s + 1) T/S) and spectrogram columns [s F/S, (s + 1) F/S) (AVE: one frame and one 1-s
window per second, LAVISH's AVE front end ``segment_windows`` lays the windows side by side). A task that scores
per segment says so with ``TaskConfig.method_segments()`` (``localization`` with ``scoring: segment``); the trial
then builds the method on the spec of one segment (:func:`segment_spec`) and attaches :func:`score_per_segment`:

    clips (B, T, 3, H, W), (B, 1, M, F)  ->  B·S mini-clips (B·S, T/S, 3, H, W), (B·S, 1, M, F/S)  ->  method
    embedding (B·S, D)  ->  (B, S, D); per_modality likewise

Every method localises this way, with no per-segment code of its own, exactly as the LAVISH AVE code folds its 10
(frame, 1-s audio) pairs into the batch (``rearrange(..., 'b t c w h -> (b t) c w h')``). A segment's presence
masks are its clip's; its ``id`` is ``<clip id>#<s>`` (what ``harness.run.frozen_cache`` keys entries by).

Shapes: ``B`` clips, ``S`` segments per clip, ``T`` frames, ``M`` mel bins, ``F`` spectrogram frames, ``D`` width.
"""

from __future__ import annotations

import dataclasses

from torch import Tensor, nn

from harness.api.inputs import InputSpec

SEGMENT_KEYS = ("video", "audio", "audio_present", "video_present", "id")  # what a mini-clip carries


def check_segments(spec: InputSpec, segments: int) -> list[tuple[str, str]]:
    """``(key, message)`` pairs when the clips of ``spec`` do not split into ``segments`` segments."""
    errors = []
    if spec.segments != segments:
        have = f"{spec.segments} labelled segments per clip" if spec.segments else "one label per clip"
        errors.append(("task.segments", f"{segments} segments are scored per clip but the dataset has {have}; set "
                                        f"task.segments={spec.segments} or task.scoring=clip"))  # fmt: skip
    if spec.frames % segments:
        errors.append(("dataset.frames", f"{spec.frames} frames do not split into {segments} segments; use a "
                                         f"multiple of {segments} (AVE: one frame per second)"))  # fmt: skip
    if spec.n_frames % segments:
        msg = f"a spectrogram of {spec.n_frames} frames does not split into {segments} windows"
        errors.append(
            ("dataset.target_frames", f"{msg}; use dataset.segment_windows={segments} (LAVISH's AVE front end)")
        )
    return errors


def segment_spec(spec: InputSpec, segments: int) -> InputSpec:
    """The input shapes of one segment: T/S frames, F/S spectrogram frames, one label per (mini-)clip.

    Raises:
        ValueError: the clip does not split evenly (:func:`check_segments`).
    """
    if errors := check_segments(spec, segments):
        raise ValueError("; ".join(f"{key}: {msg}" for key, msg in errors))
    return dataclasses.replace(spec, frames=spec.frames // segments, n_frames=spec.n_frames // segments, segments=0)


def split_segments(batch: dict, segments: int) -> dict:
    """A batch of B clips as B·S mini-clips, segment-major within each clip (clip b, segment s at row b·S + s)."""
    s = segments
    out = {}
    if "video" in batch:
        v = batch["video"]  # (B, T, 3, H, W)
        out["video"] = v.reshape(v.shape[0] * s, v.shape[1] // s, *v.shape[2:])  # (B·S, T/S, 3, H, W)
    if "audio" in batch:
        a = batch["audio"]  # (B, 1, M, F)
        a = a.unflatten(-1, (s, a.shape[-1] // s)).movedim(3, 1)  # (B, S, 1, M, F/S)
        out["audio"] = a.flatten(0, 1)  # (B·S, 1, M, F/S)
    for key in ("audio_present", "video_present"):
        if key in batch:
            out[key] = batch[key].repeat_interleave(s)  # (B·S,)
    if "id" in batch:
        out["id"] = [f"{i}#{k}" for i in batch["id"] for k in range(s)]
    return out


def merge_segments(out: dict, segments: int) -> dict:
    """The method's outputs on B·S mini-clips as (B, S, ...): ``embedding`` and each of ``per_modality``."""

    def fold(x: Tensor) -> Tensor:
        return x.unflatten(0, (x.shape[0] // segments, segments))  # (B, S, D)

    merged = dict(out, embedding=fold(out["embedding"]))
    if out.get("per_modality"):
        merged["per_modality"] = {m: fold(x) for m, x in out["per_modality"].items()}
    return merged


class _Split:
    """Forward pre-hook: the clips' batch -> its mini-clips (a class, so that a hooked method pickles)."""

    def __init__(self, segments: int):
        self.segments = segments

    def __call__(self, module: nn.Module, args: tuple) -> tuple:
        return (split_segments(args[0], self.segments), *args[1:])


class _Merge:
    """Forward hook: the mini-clips' outputs -> (B, S, D)."""

    def __init__(self, segments: int):
        self.segments = segments

    def __call__(self, module: nn.Module, args: tuple, out: dict) -> dict:
        return merge_segments(out, self.segments)


def score_per_segment(method: nn.Module, segments: int) -> nn.Module:
    """Make ``method(batch)`` run on each clip's ``segments`` mini-clips and return (B, S, D) embeddings.

    The method is the same object (same parameters, state dict, checkpoint keys); two forward hooks do the
    reshaping, so engines, checkpoints and the frozen cache see nothing new. ``method.scored_segments`` says S.
    The method must have been built on :func:`segment_spec` of the clips' spec.
    """
    method.register_forward_pre_hook(_Split(segments))
    method.register_forward_hook(_Merge(segments))
    method.scored_segments = segments
    return method
