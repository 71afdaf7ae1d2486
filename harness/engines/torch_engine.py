"""The ``torch`` engine: one process, AdamW + linear warmup + cosine decay, seeded and deterministic on CPU.

Every epoch: train over the shuffled train split, evaluate on val, report ``train/loss``, ``val/<metric>`` and
``lr``. At the end: test with both modalities, then with one masked (``test/<metric>:audio_only`` has the video
masked, ``:video_only`` the audio), and the ``perf/*`` figures.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch
from torch import nn

from harness.augment import augment
from harness.config import RunSpec
from harness.tasks import tree_map


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; the message names where and what to try."""


class TorchEngine:
    """Trains and evaluates a method + task on one device.

    Args:
        spec: the run; ``spec.train`` holds the schedule.
        device: where to run; default CUDA when available, else CPU.
    """

    def __init__(self, spec: RunSpec, device: str | None = None):
        self.spec = spec
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))

    # -- pieces ------------------------------------------------------------------------------------------------

    def optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        """AdamW over the trainable parameters; no weight decay on biases and norms (1-D parameters)."""
        t = self.spec.train
        trainable = [p for p in model.parameters() if p.requires_grad]
        groups = [
            {"params": [p for p in trainable if p.ndim >= 2], "weight_decay": t.weight_decay},
            {"params": [p for p in trainable if p.ndim < 2], "weight_decay": 0.0},
        ]
        return torch.optim.AdamW([g for g in groups if g["params"]], lr=t.lr)

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

    def _to_device(self, batch: dict) -> dict:
        return {k: v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}

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
            batch = self._to_device(batch)
            scores.append(tree_map(lambda s: s.float().cpu(), task.scores(method(batch), batch)))
            labels.append(tree_map(lambda y: y.cpu(), batch["label"]))
            ids.extend(batch["id"])
        return task.summarize(scores, labels, ids)

    # -- the loop ----------------------------------------------------------------------------------------------

    def fit(self, method: nn.Module, task: nn.Module, data, report: Callable[[dict, int], None]) -> dict[str, float]:
        """Train, validate each epoch, test at the end. ``report(metrics, step)`` receives every figure.

        Returns:
            The last epoch's ``train/loss`` and ``val/*`` with the final ``test/*`` and ``perf/*`` (only the latter
            are reported at step ``epochs``).

        Raises:
            NonFiniteLossError: the loss became NaN or infinite.
        """
        t = self.spec.train
        method.to(self.device)
        task.to(self.device)
        model = nn.ModuleDict({"method": method, "task": task})
        opt = self.optimizer(model)
        train = data.splits["train"]
        steps = len(train) // t.batch_size or 1
        sched = self.schedule(opt, steps)
        params = [p for p in model.parameters() if p.requires_grad]
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        start, seen, train_time, last = time.perf_counter(), 0, 0.0, {}
        for epoch in range(t.epochs):
            method.train()
            tick, total, n = time.perf_counter(), torch.zeros((), device=self.device), 0
            for i, batch in enumerate(self.train_batches(train, epoch)):
                batch = augment(self._to_device(batch), task, t, key=(self.spec.seed, epoch, i))
                loss = task.loss(method(batch), batch)
                if not torch.isfinite(loss):
                    raise NonFiniteLossError(
                        f"train/loss is {loss.item()} at epoch {epoch} step {i} "
                        f"(method.name={self.spec.method.name}, train.lr={t.lr}); lower train.lr, set train.grad_clip, "
                        "or check the inputs for NaN"
                    )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if t.grad_clip:
                    nn.utils.clip_grad_norm_(params, t.grad_clip)
                opt.step()
                sched.step()
                total += loss.detach()
                n += 1
            seen += n * t.batch_size
            train_time += time.perf_counter() - tick
            val = self.evaluate(method, task, data.splits["val"])
            last = {"train/loss": (total / max(1, n)).item(), **{f"val/{k}": v for k, v in val.items()}}
            report({**last, "lr": sched.get_last_lr()[0], "epoch": epoch}, epoch)

        final = self.final_metrics(method, task, data, seen / max(train_time, 1e-9), start)
        report(final, t.epochs)
        return {**last, **final}

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


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this process: CUDA allocator peak on a GPU, max resident set size on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
