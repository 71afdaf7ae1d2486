"""The ``torch`` engine: one process, AdamW or SGD + linear warmup + cosine decay, seeded and deterministic on CPU.

Every epoch: train over the shuffled train split, evaluate on val, report ``train/loss``, ``val/<metric>`` and
``lr``. At the end: test with both modalities, then with one masked (``test/<metric>:audio_only`` has the video
masked, ``:video_only`` the audio), and the ``perf/*`` figures.

Checkpoints: given a ``harness.api.Checkpoints`` (a sweep's ``TuneReporter``, ``harness run``'s ``LocalCheckpoints``),
every ``train.checkpoint_every``-th epoch's report (and the last's) carries the training state
(:meth:`TorchEngine.state`: the trainable parameters and the buffers, optimiser, schedule, loss scaler, RNG, epoch,
metrics history), a host snapshot that a reporter may write in the background; a trial whose checkpoint exists
continues after its last
epoch with the same batches, RNG and learning rate as if it had never stopped. Frozen parameters are not saved: the
rebuilt model has them already (same seed, same backbone weights). The last checkpoint also holds the final metrics.

Speed (``harness.run.perf``): ``train.precision`` (autocast; fp16 with a loss scaler), TF32 and fused AdamW on CUDA,
``train.compile``, ``train.grad_accum`` micro-batches, ``train.activation_checkpointing``. The loop reads no device
value of the step it has just queued: the loss is checked for NaN one step late (the device runs step i while the
host waits for step i - 1), and the presence flags stay on the host, so a complete batch needs no attention mask
(``harness.api.complete``). ``perf/step_ms``, ``perf/data_wait_ms`` / ``_frac`` and ``perf/mfu`` are reported at
the end.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from harness.api import Checkpoints, Engine, TrainHook, mark_complete, tree_map
from harness.config import EngineConfig, RunSpec
from harness.run.augment import augment
from harness.run.engines.common import host_copy, load_trainable_state, micro_batches, trainable_state
from harness.run.optim import param_groups
from harness.run.perf import (
    StepClock,
    autocast,
    checkpoint_activations,
    enable_tf32,
    mfu,
    peak_tflops,
    resolve_precision,
)


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; the message names where and what to try."""


class TorchEngine(Engine):
    """Trains and evaluates a method + task on one device.

    Args:
        spec: the run; ``spec.train`` holds the schedule.
        device: where to run; default CUDA when available, else CPU.
    """

    Config = EngineConfig

    def __init__(self, spec: RunSpec, device: str | None = None):
        super().__init__(spec)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.precision = resolve_precision(spec.train.precision, self.device)  # fp32 | bf16 | fp16
        # FLOPs per clip of a training step (model/train_gflops), set by run_trial; None = no perf/mfu
        self.train_gflops: float | None = None

    # -- pieces ------------------------------------------------------------------------------------------------

    def optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        """``train.optimizer`` (AdamW, or SGD with momentum) over the trainable parameters, in the groups of
        ``train.lr_groups``; no weight decay on biases and norms (1-D parameters); ``harness.run.optim``."""
        t = self.spec.train
        groups = param_groups(model, t)
        if t.optimizer == "sgd":  # scenic's 'momentum' (optax.sgd): buf = m buf + g; p -= lr buf, as torch's SGD
            return torch.optim.SGD(groups, lr=t.lr, momentum=t.momentum, nesterov=t.nesterov)
        return torch.optim.AdamW(groups, lr=t.lr, fused=self.device.type == "cuda")

    def schedule(self, opt: torch.optim.Optimizer, steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
        """Per-step learning rate: linear warmup to ``lr``, then cosine decay to ``min_lr``."""
        t = self.spec.train
        total = max(1, t.epochs * steps_per_epoch)
        warm = min(total - 1, round(t.warmup_epochs * steps_per_epoch))
        floor = t.min_lr / t.lr

        def factor(step: int) -> float:
            if step < warm:
                return (step + 1) / (warm + 1)
            progress = (step - warm) / max(1, total - warm)
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

        return torch.optim.lr_scheduler.LambdaLR(opt, factor)

    def train_batches(self, train, epoch: int, **kwargs):
        """The epoch's training batches in the order every engine uses: shuffled by (seed, epoch), last dropped."""
        seed = self.spec.seed * 100_003 + epoch
        return train.batches(self.spec.train.batch_size, shuffle=True, seed=seed, drop_last=True, **kwargs)

    def _to_device(self, batch: dict, split) -> dict:
        """The batch on the device, then through its split's ``on_device`` (uint8 video -> normalised there). The
        presence flags stay on the host: methods decide there whether a batch needs masks at all and copy the flags
        to the device without blocking (``harness.api.modalities``)."""
        moved = {k: v.to(self.device, non_blocking=True) if torch.is_tensor(v) and not k.endswith("_present") else v
                 for k, v in batch.items()}  # fmt: skip
        return split.on_device(moved)

    def autocast(self) -> contextlib.AbstractContextManager:
        """Autocast to the run's precision around a forward and its loss (nothing for fp32)."""
        return autocast(self.device, self.precision)

    @torch.no_grad()
    def evaluate(self, method: nn.Module, task: nn.Module, split, mask: str | None = None) -> dict[str, float]:
        """Metrics of ``task`` on ``split``; ``mask`` = ``"audio"`` or ``"video"`` marks that modality absent.

        Labels and scores may be tensors of any shape or dicts of them (multihead); the task averages the views of
        one clip (equal ``id``) and computes its metrics over the whole split (``Task.summarize``).
        """
        method.eval()
        scores, labels, ids = [], [], []
        for batch in split.batches(self.spec.train.eval_batch_size):
            if mask is not None:
                batch[f"{mask}_present"] = torch.zeros_like(batch[f"{mask}_present"])
            batch = mark_complete(self._to_device(batch, split))
            with self.autocast():
                out = task.scores(method(batch), batch)
            scores.append(tree_map(lambda s: s.float().cpu(), out))
            labels.append(tree_map(lambda y: y.cpu(), batch["label"]))
            ids.extend(batch["id"])
        return task.summarize(scores, labels, ids)

    # -- the loop ----------------------------------------------------------------------------------------------

    def fit(self, method: nn.Module, task: nn.Module, data, report: Callable[[dict, int], None],
            checkpoints: Checkpoints | None = None, hooks: Sequence[TrainHook] = ()) -> dict[str, float]:  # fmt: skip
        """Train, validate each epoch, test at the end. ``report(metrics, step)`` receives every figure.

        With ``checkpoints``, the epochs' and the final reports go to ``checkpoints.report`` with the training state,
        and training continues after the epoch of ``checkpoints.restore()`` when there is one. ``hooks`` are called
        before training and before every step (``harness.api.TrainHook``).

        Returns:
            The last epoch's ``train/loss`` and ``val/*`` with the final ``test/*`` and ``perf/*`` (only the latter
            are reported at step ``epochs``).

        Raises:
            NonFiniteLossError: the loss became NaN or infinite.
        """
        t = self.spec.train
        method.to(self.device)
        task.to(self.device)
        enable_tf32(self.device)
        if t.activation_checkpointing:
            checkpoint_activations(method)
        if t.compile:  # in place: the state dict keeps its keys (checkpoints load either way)
            method.compile(backend=t.compile_backend)
        model = nn.ModuleDict({"method": method, "task": task})
        opt = self.optimizer(model)
        scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        train = data.splits["train"]
        steps = len(train) // t.batch_size or 1
        sched = self.schedule(opt, steps)
        params = [p for p in model.parameters() if p.requires_grad]
        reset_peak_memory(self.device)
        start, seen, train_time, last, history = time.perf_counter(), 0, 0.0, {}, {}
        restored = checkpoints.restore() if checkpoints else None
        if restored is not None:
            load_trainable_state(model, restored["model"])
            opt.load_state_dict(restored["optimizer"])
            sched.load_state_dict(restored["scheduler"])
            if restored.get("scaler"):
                scaler.load_state_dict(restored["scaler"])
            set_rng_state(restored["rng"])
            seen, train_time, history = restored["seen"], restored["train_time"], restored["history"]
            start -= restored["wall_s"]  # perf/wall_s counts the time before the restart too
            last = {k: v for k, v in history[max(history)].items() if "/" in k} if history else {}
            if restored["final"] is not None:  # it had finished: report the end again (the tracker keeps one copy)
                checkpoints.report(restored["final"], t.epochs, restored)
                return {**last, **restored["final"]}
        first = restored["epoch"] + 1 if restored is not None else 0
        for hook in hooks:
            hook.on_fit_start(self.spec, resumed=restored is not None, steps=steps)

        def emit(metrics: dict, step: int, epoch: int, final: dict | None = None) -> None:
            if checkpoints is None:
                return report(metrics, step)
            if final is None and (epoch + 1) % t.checkpoint_every and epoch + 1 < t.epochs:
                return checkpoints.report(metrics, step, None)  # no state this epoch (train.checkpoint_every)
            state = self.state(model, opt, sched, epoch, history, seen, train_time, time.perf_counter() - start, final)
            state["scaler"] = scaler.state_dict()
            checkpoints.report(metrics, step, state)

        clock = StepClock()
        for epoch in range(first, t.epochs):
            method.train()
            tick, total, n, pending = time.perf_counter(), torch.zeros((), device=self.device), 0, None
            for i, batch in enumerate(clock.batches(self.train_batches(train, epoch))):
                for hook in hooks:
                    hook.on_step(epoch, i)
                batch = augment(self._to_device(batch, train), task, t, key=(self.spec.seed, epoch, i))
                loss = self.train_step(method, task, batch, opt, sched, scaler, params)
                self._settle(pending, clock)  # the previous step's loss, read one step late
                pending = (loss, epoch, i)
                total += loss
                n += 1
            self._settle(pending, clock)
            seen += n * t.batch_size
            train_time += time.perf_counter() - tick
            val = self.evaluate(method, task, data.splits["val"])
            last = {"train/loss": (total / max(1, n)).item(), **{f"val/{k}": v for k, v in val.items()}}
            history[epoch] = {**last, "lr": sched.get_last_lr()[0], "epoch": epoch}
            emit(history[epoch], epoch, epoch)

        final = self.final_metrics(method, task, data, seen / max(train_time, 1e-9), start)
        final.update(self.speed_metrics(clock, train_time))
        emit(final, t.epochs, t.epochs - 1, final)
        return {**last, **final}

    def train_step(self, method: nn.Module, task: nn.Module, batch: dict, opt: torch.optim.Optimizer, sched,
                   scaler: torch.amp.GradScaler, params: list[nn.Parameter]) -> torch.Tensor:  # fmt: skip
        """One optimiser step on ``batch`` (on the device, augmented): ``train.grad_accum`` micro-batches, each
        forward and loss under autocast, the loss scaled for fp16, gradients clipped, then the schedule's step.

        Returns:
            The step's loss, a device scalar (not read back: no sync).
        """
        t = self.spec.train
        opt.zero_grad(set_to_none=True)
        loss = torch.zeros((), device=self.device)
        for micro in micro_batches(batch, t.grad_accum):
            micro = mark_complete(micro)
            with self.autocast():
                part = task.loss(method(micro), micro).float() / t.grad_accum
            scaler.scale(part).backward()
            loss += part.detach()
        if t.grad_clip:
            scaler.unscale_(opt)
            nn.utils.clip_grad_norm_(params, t.grad_clip)
        scaler.step(opt)
        scaler.update()
        sched.step()
        return loss

    def _settle(self, pending: tuple[torch.Tensor, int, int] | None, clock: StepClock) -> None:
        """The step before this one is done: check its (loss, epoch, step), read while the next one runs on the
        device (no sync on the step just queued), and time it; nothing before the first step."""
        if pending is not None:
            self._check_finite(*pending)
            clock.done()

    def _check_finite(self, loss: torch.Tensor, epoch: int, step: int) -> None:
        """Raise :class:`NonFiniteLossError` if the step's loss is NaN or infinite (reads it back: a sync)."""
        value = loss.item()
        if not math.isfinite(value):
            t = self.spec.train
            raise NonFiniteLossError(
                f"train/loss is {value} at epoch {epoch} step {step} (method.name={self.spec.method.name}, "
                f"train.lr={t.lr}, train.precision={t.precision}); lower train.lr, set train.grad_clip, use "
                "train.precision=fp32, or check the inputs for NaN"
            )

    def speed_metrics(self, clock: StepClock, train_time: float, devices: int = 1) -> dict[str, float]:
        """``perf/step_ms``, ``perf/data_wait_*`` and, where the FLOPs and the device's peak are known, ``perf/mfu``
        (and ``perf/train_tflops``, the achieved rate) over ``devices`` (data-parallel ranks)."""
        t = self.spec.train
        out = clock.metrics(train_time)
        step = clock.step_s()
        if self.train_gflops is not None and step is not None:
            rate = self.train_gflops * t.batch_size / step  # GFLOP/s of the whole (global) batch
            out["perf/train_tflops"] = rate / 1e3
            if (peak := peak_tflops(self.device, self.precision, t.peak_tflops)) is not None:
                out["perf/mfu"] = mfu(self.train_gflops, t.batch_size / step, peak, devices)
        return out

    def state(self, model: nn.Module, opt, sched, epoch: int, history: dict, seen: int, train_time: float,
              wall_s: float, final: dict | None = None) -> dict:  # fmt: skip
        """The training state after ``epoch``: what :meth:`fit` needs to continue exactly (``torch.load``-able with
        ``weights_only=True``: tensors, numbers, strings, containers), copied to the host so that training may go on
        while it is written. ``final`` holds the test/perf metrics once the trial has finished; ``spec`` is the resolved
        run as JSON, what ``harness eval`` rebuilds the model from."""
        state = {"format": 2, "epoch": epoch, "model": trainable_state(model), "optimizer": opt.state_dict(),
                 "scheduler": sched.state_dict(), "rng": rng_state(), "history": dict(history), "seen": seen,
                 "train_time": train_time, "wall_s": wall_s, "final": final,
                 "spec": json.dumps(self.spec.to_dict())}  # fmt: skip
        return host_copy(state)

    def final_metrics(self, method, task, data, samples_per_s: float, start: float) -> dict[str, float]:
        """``test/*`` with both modalities and with each masked, and the ``perf/*`` figures of the run."""
        test = data.splits["test"]
        final = {f"test/{k}": v for k, v in self.evaluate(method, task, test).items()}
        # ":audio_only": only the audio is present (video masked), and the other way round.
        for present, masked in (("audio_only", "video"), ("video_only", "audio")):
            final.update({f"test/{k}:{present}": v for k, v in self.evaluate(method, task, test, mask=masked).items()})
        final["perf/train_samples_per_s"] = samples_per_s
        final["perf/peak_mem_mb"] = peak_memory_mb(self.device)
        final["perf/wall_s"] = time.perf_counter() - start
        return final


def rng_state() -> dict:
    """Python, NumPy and torch (CPU and CUDA) random states, as tensors and plain values."""
    import numpy as np

    kind, key, pos, has_gauss, gauss = np.random.get_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    return {"python": random.getstate(), "numpy": [kind, torch.from_numpy(key.astype(np.int64)), pos, has_gauss, gauss],
            "torch": torch.get_rng_state(), "cuda": cuda}  # fmt: skip


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` saved (CUDA states only where this process has as many devices)."""
    import numpy as np

    random.setstate(state["python"])
    kind, key, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, key.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


_PROC = Path("/proc/self")


def reset_peak_memory(device: torch.device) -> None:
    """Start a trial's peak-memory window: the CUDA allocator's peak, and on Linux the process's peak RSS.

    A sweep worker may run several trials (``tune.reuse_actors``); writing 5 to ``/proc/self/clear_refs`` resets
    the kernel's resident-set high-water mark (VmHWM) to the current RSS, so each trial reports its own peak.
    """
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with contextlib.suppress(OSError):
        (_PROC / "clear_refs").write_text("5")


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory since :func:`reset_peak_memory`: CUDA allocator peak on a GPU, peak resident set size on the CPU.

    On the CPU: VmHWM of ``/proc/self/status`` (Linux); elsewhere the process's lifetime ``ru_maxrss``.
    """
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    with contextlib.suppress(OSError, StopIteration, ValueError):
        line = next(x for x in (_PROC / "status").read_text().splitlines() if x.startswith("VmHWM:"))
        return int(line.split()[1]) / 1024  # kB
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
