"""The ``deepspeed`` engine: ``engine.workers`` data-parallel ranks under Ray Train, each a DeepSpeed engine.

The trial process builds a Ray Train ``TorchTrainer`` (gloo on CPU, nccl on GPU); every worker builds the dataset,
method and task exactly as :func:`harness.run.trial.run_trial` does, counts their cost on the unwrapped model (rank 0),
and trains with the torch engine's AdamW param groups and warmup + cosine schedule handed to
``deepspeed.initialize`` (a torch optimizer, so nothing is JIT-compiled for it). Each rank takes its slice of every
global batch of the seeded permutation (``train.batch_size`` is the global batch), so the optimiser steps see the
same clips as the torch engine's. Every rank evaluates the whole val/test split (ZeRO-3 needs every rank in each
forward) and calls ``ray.train.report`` the same number of times; rank 0's reports are shaped like
``harness.run.tune_report.TuneReporter``'s, so a sweep's driver-side MLflow callback cannot tell the engines apart.

In a Tune trial the reports go to Tune through ``TuneReportCallback``; under ``harness run`` the trial process starts
local Ray, and a callback queues the reports back to the trial's reporter.

Checkpoints: after every epoch each rank calls ``save_checkpoint`` (DeepSpeed's format: ZeRO shards per rank, with
the epoch, metrics history and RNG states as client state) into its own folder and reports it with its metrics; Ray
Train merges the ranks' folders into one checkpoint. In a sweep the Train run is named after the Tune trial and kept
in the sweep's storage, so when Tune restarts the trial (``tune.max_failures``, ``harness sweep --resume``) Ray Train
finds that run's latest checkpoint and every rank continues after its epoch.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from pydantic import Field, model_validator
from torch import nn

from harness.api import TrainHook, mark_complete
from harness.config import EngineConfig, RunSpec, TrainConfig
from harness.run.augment import augment
from harness.run.engines.common import micro_batches
from harness.run.engines.torch_engine import TorchEngine, reset_peak_memory, rng_state, set_rng_state
from harness.run.perf import DTYPES, StepClock

MOVED = {"precision": "train.precision", "grad_accum": "train.grad_accum"}  # one spelling for both engines


class DeepSpeedConfig(EngineConfig):
    """Settings of ``engine: {name: deepspeed}`` (and of ``auto`` when it picks DeepSpeed)."""

    workers: int = Field(1, ge=1, description="data-parallel ranks (Ray Train workers) per trial; 1 GPU each on GPU")
    zero_stage: int = Field(0, ge=0, le=3, description="ZeRO stage: 0 = plain data parallel, 1/2/3 = partition "
                            "optimiser state / + gradients / + parameters")  # fmt: skip

    @model_validator(mode="before")
    @classmethod
    def _moved(cls, data: Any) -> Any:
        if isinstance(data, dict) and (moved := [k for k in MOVED if k in data]):
            raise ValueError("; ".join(f"engine.{k} is now {MOVED[k]} (one key for every engine)" for k in moved))
        return data

    def check(self, train: TrainConfig) -> list[tuple[str, str]]:
        """``train.batch_size`` must split evenly into ``workers`` × ``grad_accum`` micro-batches; the torch engine's
        compile and activation checkpointing are not wired into DeepSpeed."""
        n, errors = self.workers * train.grad_accum, []
        if train.batch_size % n:
            errors.append(("train.batch_size", f"must be a multiple of engine.workers × train.grad_accum = {n} "
                                               f"(got {train.batch_size})"))  # fmt: skip
        for key in ("compile", "activation_checkpointing"):
            if getattr(train, key):
                errors.append((f"train.{key}", "is a torch-engine setting; the deepspeed engine does not apply it "
                                               "(set it to false, or use engine.name=torch)"))  # fmt: skip
        return errors


class _Joint(nn.Module):
    """Method + task as one module whose forward is the training loss (what DeepSpeed wraps)."""

    def __init__(self, method: nn.Module, task: nn.Module):
        super().__init__()
        self.method, self.task = method, task

    def forward(self, batch: dict) -> torch.Tensor:
        batch = mark_complete(batch)  # from the host flags: no mask for a complete micro-batch
        return self.task.loss(self.method(batch), batch)


class DeepSpeedEngine(TorchEngine):
    """Runs a trial as ``engine.workers`` DeepSpeed ranks; built in the trial process and in each worker.

    Args:
        spec: the run; ``spec.engine`` is a :class:`DeepSpeedConfig`.
        device: where this rank runs; default CUDA when available, else CPU.
    """

    Config = DeepSpeedConfig
    distributed = True  # run_trial calls launch() instead of building the model in the trial process

    def __init__(self, spec: RunSpec, device: str | None = None):
        super().__init__(spec, device)
        self.dtype = DTYPES[self.precision]  # train.precision resolved on this device (auto: bf16 on a GPU with it)

    def _to_device(self, batch: dict, split) -> dict:
        batch = super()._to_device(batch, split)  # moved, then the split's on_device (uint8 video -> float)
        return {k: (v.to(self.dtype) if torch.is_tensor(v) and v.is_floating_point() else v)
                for k, v in batch.items()}  # fmt: skip

    def ds_config(self) -> dict[str, Any]:
        """The DeepSpeed config dict: batch split, ZeRO stage, precision, clipping; no optimiser block."""
        t, e = self.spec.train, self.spec.engine
        return {
            "train_batch_size": t.batch_size,
            "train_micro_batch_size_per_gpu": t.batch_size // (e.workers * t.grad_accum),
            "gradient_accumulation_steps": t.grad_accum,
            "gradient_clipping": t.grad_clip or 0.0,
            "zero_optimization": {"stage": e.zero_stage},
            "bf16": {"enabled": self.precision == "bf16"},
            "fp16": {"enabled": self.precision == "fp16"},
            "zero_allow_untested_optimizer": True,  # a torch AdamW, not DeepSpeed's own
            "steps_per_print": 2**31 - 1,
        }

    # -- trial process -----------------------------------------------------------------------------------------

    def launch(self, reporter) -> dict[str, float]:
        """Run the workers under a ``TorchTrainer`` and pass rank 0's reports on; returns the final metrics.

        In a Tune trial (``reporter`` is a :class:`harness.run.tune_report.TuneReporter`) the reports reach Tune through
        ``TuneReportCallback``; otherwise local Ray is started if needed and each report goes to ``reporter``.
        """
        import ray
        import ray.tune
        from ray.train import CheckpointConfig, RunConfig, ScalingConfig
        from ray.train.torch import TorchConfig, TorchTrainer
        from ray.util.queue import Queue

        from harness.run.tune_report import TuneReporter, from_report

        in_tune = isinstance(reporter, TuneReporter)
        started = not in_tune and not ray.is_initialized()
        if started:
            ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        queue, last, failure = Queue(actor_options={"num_cpus": 0}), {}, []

        def forward() -> None:
            while (item := queue.get()) is not None:
                last.update(item)
                try:
                    if not in_tune:
                        from_report(item, reporter)
                except Exception as e:  # re-raised in the trial process once training ends
                    failure.append(e)

        callbacks: list = [_queue_callback(queue)]
        if in_tune:
            from ray.tune.integration.ray_train import TuneReportCallback

            callbacks.append(TuneReportCallback())
        gpu = self.device.type == "cuda"
        # In a sweep: a stable name in the sweep's (shared) storage, so that a restarted trial's Train run resumes.
        if in_tune and reporter.storage:
            storage, name = reporter.storage, f"train-{ray.tune.get_context().get_trial_id()}"
        elif in_tune:
            storage, name = ray.tune.get_context().get_trial_dir(), "train"
        else:
            storage, name = str(Path.cwd() / ".harness" / "ray"), f"{self.spec.name}-{time.time_ns()}"
        env = {} if gpu else {"DS_ACCELERATOR": "cpu"}
        trainer = TorchTrainer(
            _worker,
            train_loop_config={"spec": self.spec.to_dict()},
            scaling_config=ScalingConfig(
                num_workers=self.spec.engine.workers, use_gpu=gpu, resources_per_worker=worker_resources(self.spec)
            ),
            torch_config=TorchConfig(backend="nccl" if gpu else "gloo"),
            run_config=RunConfig(
                name=name,
                storage_path=storage,
                checkpoint_config=CheckpointConfig(num_to_keep=1),  # the last epoch's: what a restart needs
                callbacks=callbacks,
                worker_runtime_env={"env_vars": env},
            ),
        )
        thread = threading.Thread(target=forward, daemon=True)
        thread.start()
        try:
            trainer.fit()
        finally:
            queue.put(None)
            thread.join()
            if started:
                ray.shutdown()
        if failure:
            raise failure[0]
        return {k: v for k, v in last.items() if "/" in k and not k.startswith("model/")}

    # -- worker ------------------------------------------------------------------------------------------------

    def train_rank(self, data, method: nn.Module, task: nn.Module, report, hooks: Sequence[TrainHook] = ()
                   ) -> dict[str, float]:  # fmt: skip
        """This rank's share of training, then evaluation; ``report(metrics, step, checkpoint_dir)`` is called on
        every rank, as often on each, with this rank's checkpoint folder after each epoch (None for the final one).

        Raises:
            NonFiniteLossError: the loss became NaN or infinite.
        """
        import deepspeed
        import torch.distributed as dist

        t, e = self.spec.train, self.spec.engine
        rank, world = dist.get_rank(), dist.get_world_size()
        if world != e.workers:
            raise RuntimeError(f"engine.workers={e.workers} but the process group has {world} ranks")
        model = _Joint(method, task)
        opt = self.optimizer(model)
        train = data.splits["train"]
        steps = len(train) // t.batch_size or 1
        engine, *_ = deepspeed.initialize(model=model, optimizer=opt, config=self.ds_config(),
                                          lr_scheduler=lambda o: self.schedule(o, steps))  # fmt: skip
        reset_peak_memory(self.device)
        start, seen, train_time, last, history, first = time.perf_counter(), 0, 0.0, {}, {}, 0
        if (checkpoint := ray_checkpoint()) is not None:  # Ray Train kept one: continue after its epoch
            with checkpoint.as_directory() as folder:
                _, state = engine.load_checkpoint(folder, tag="last")
            set_rng_state(state["rng"])
            seen, train_time, history, first = state["seen"], state["train_time"], state["history"], state["epoch"] + 1
            start -= state["wall_s"]
            last = {k: v for k, v in history[max(history)].items() if "/" in k} if history else {}
        for hook in hooks:
            hook.on_fit_start(self.spec, resumed=checkpoint is not None, steps=steps, rank=rank, world=world)
        clock = StepClock()
        for epoch in range(first, t.epochs):
            engine.train()
            tick, total, n, pending = time.perf_counter(), torch.zeros((), device=self.device), 0, None
            for i, batch in enumerate(clock.batches(self.train_batches(train, epoch, shard=(rank, world)))):
                for hook in hooks:
                    hook.on_step(epoch, i)
                batch = augment(
                    self._to_device(batch, train), task, t, key=(self.spec.seed, epoch, i)
                )  # run/augment.py
                loss = torch.zeros((), device=self.device)
                for micro in micro_batches(batch, t.grad_accum):
                    part = engine(micro)
                    engine.backward(part)
                    engine.step()
                    loss += part.detach().float() / t.grad_accum
                self._settle(pending, clock)  # the previous step's loss, read one step late
                pending = (loss, epoch, i)
                total += loss
                n += 1
            self._settle(pending, clock)
            dist.all_reduce(total)  # sum over ranks of each rank's mean loss per step
            seen += n * t.batch_size
            train_time += time.perf_counter() - tick
            val = self.evaluate(method, task, data.splits["val"])
            last = {"train/loss": (total / (max(1, n) * world)).item(), **{f"val/{k}": v for k, v in val.items()}}
            history[epoch] = {**last, "lr": engine.get_lr()[0], "epoch": epoch}
            state = {"epoch": epoch, "history": history, "seen": seen, "train_time": train_time,
                     "wall_s": time.perf_counter() - start, "rng": rng_state()}  # fmt: skip
            with tempfile.TemporaryDirectory(prefix=f"harness-ds-rank{rank}-") as folder:
                engine.save_checkpoint(folder, tag="last", client_state=state)  # every rank: ZeRO shards are per rank
                report(history[epoch], epoch, folder)

        final = self.final_metrics(method, task, data, seen / max(train_time, 1e-9), start)
        final.update(self.speed_metrics(clock, train_time, devices=world))
        report(final, t.epochs, None)
        return {**last, **final}


def ray_checkpoint():
    """The latest checkpoint of this Ray Train run (a restarted trial's), or None."""
    import ray.train

    return ray.train.get_checkpoint()


def worker_resources(spec: RunSpec) -> dict[str, float]:
    """Ray resources of one worker: ``train.threads`` CPUs (default 1), and one GPU where CUDA is available."""
    return {"CPU": float(spec.train.threads or 1), **({"GPU": 1.0} if torch.cuda.is_available() else {})}


def _queue_callback(queue):
    """A Ray Train callback (it runs in the Train controller) that puts rank 0's metrics of each report on ``queue``."""
    from ray.train.v2.api.callback import UserCallback

    class QueueCallback(UserCallback):
        def after_report(self, run_context, metrics: list[dict], checkpoint) -> None:
            queue.put(metrics[0])

    return QueueCallback()


def _worker(config: dict) -> None:
    """One Ray Train worker: build the trial as ``run_trial`` does, train this rank, report every epoch."""
    from harness.run.trial import deterministic, seed_everything

    spec = RunSpec.from_dict(config["spec"])
    if spec.train.threads:
        torch.set_num_threads(spec.train.threads)
    with deterministic():
        seed_everything(spec.seed)
        _train_worker(spec)


def _train_worker(spec: RunSpec) -> None:
    """This rank's trial: data, model, cost (rank 0), training and evaluation."""
    import ray.train
    import torch.distributed as dist

    from harness.run.trial import build_dataset, build_model, env_hooks, model_cost, run_tags
    from harness.run.tune_report import start_report, step_report

    if not dist.is_initialized():  # Ray Train's TorchConfig normally has set it up already
        import deepspeed

        deepspeed.init_distributed(dist_backend="gloo")
    lead = dist.get_rank() == 0
    engine = DeepSpeedEngine(spec, str(ray.train.torch.get_device()))
    data = build_dataset(spec)
    method, task = build_model(spec, data.spec)
    info: dict = {}
    if lead:  # counted on the unwrapped model, before DeepSpeed partitions or casts it
        import deepspeed

        tags = {**run_tags(spec, engine.device, data, task), "harness.engine": "deepspeed",
                "harness.deepspeed_version": deepspeed.__version__,
                "harness.workers": str(spec.engine.workers)}  # fmt: skip
        micro = spec.train.batch_size // (spec.engine.workers * spec.train.grad_accum)
        cost = model_cost(method, task, data.spec, batch_size=micro)
        engine.train_gflops = cost["model/train_gflops"]  # perf/mfu on the lead rank, which reports
        info = start_report({"tags": tags, "metrics": cost})
    ray.train.report(info)

    def report(metrics: dict, step: int, folder: str | None) -> None:
        checkpoint = ray.train.Checkpoint.from_directory(folder) if folder else None
        ray.train.report(step_report(metrics, step) if lead else {}, checkpoint=checkpoint)

    engine.train_rank(data, method, task, report, env_hooks(spec))
