"""The GPU device check, one script (<= 8 minutes on one H100/H200), results under the folder given as argument.

1. **step**: bf16 training steps (autocast, fused AdamW, TF32, no attention mask: complete batches) of ``mbt`` and
   ``vanilla`` at ViT-B/16 with MBT's AudioSet inputs (32 frames of 224², an 800 x 128 spectrogram: 3536 tokens) and
   of ``lavish`` at ViT-B (AVE: one frame, a 1-s spectrogram: 196 + 48 tokens): clips/s, MFU (training FLOPs per
   clip counted on the meta device x clips/s / the GPU's bf16 peak, ``harness/run/perf.py``), and the ratio to a timm
   ViT-B/16 step over the same token count, the two timed alternately (ABAB, blocks of steps, medians) in the same
   process. The goal's ratio is of FLOP throughput (as ``bench/step.py``: a method is not penalised for FLOPs it
   adds or credited for those it saves); clips/s are printed beside it.
2. **deepspeed**: a DeepSpeed bf16 trial of ``mbt`` on the synthetic default (``run.yaml``) through ``harness run``;
   its MLflow figures (``perf/mfu``, ``perf/step_ms``, ``test/top1``) and wall time.
3. **sweep**: 4 trials of the synthetic default as a sweep sharing the GPU (``tune.resources.gpu: 0.25``, 4 at a
   time) vs the same 4 one at a time with a whole GPU each: the makespan ratio (Ray start-up in both).
4. **curves**: fp32 vs bf16 loss curves of the synthetic default over the same 200 steps (same seed, batches and
   initialisation; ``TorchEngine.train_step``); they agree when the mean loss of every window of 20 steps differs
   by at most 5 % (relative) and the last 50 steps' mean by at most 3 %.

``--dry-run`` builds and runs every part at tiny size on the CPU (bf16 autocast, a 48-clip dataset, 10 steps, a
stand-in peak of 1 TFLOP/s), so the script is known to start; its figures are not measurements.
``tests/bench/test_gpu_dry_run.py`` runs it.

    python bench/gpu.py OUT [--dry-run] [--only step,deepspeed,sweep,curves] [--peak-tflops X]

Writes ``OUT/results.json`` (every figure), ``OUT/summary.md`` (the figures against their targets, then everything
it printed), ``OUT/curves.csv``, ``OUT/mlflow.db`` with the DeepSpeed trial and the sweeps, and the synthetic data's
cache under ``OUT/cache`` (``--cache-dir`` elsewhere).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from timm.models.vision_transformer import VisionTransformer
from torch.utils.flop_counter import FlopCounterMode

from harness.api import mark_complete
from harness.models.backbones import num_audio_tokens, num_video_tokens
from harness.models.complexity import example_batch, meta_copy, train_flops
from harness.registry import METHODS, TASKS
from harness.run.perf import autocast, enable_tf32, mfu, peak_tflops
from harness.run.profile import load_profile, preset_path

REPO = Path(__file__).resolve().parents[1]
PARTS = ("step", "deepspeed", "sweep", "curves")
# (method, preset, batch) at full size; the tiny versions for --dry-run below
STEPS = (("mbt", "mbt_b16_audioset", 16), ("vanilla", "vanilla_b16_audioset", 16), ("lavish", "lavish_vitb16_ave", 64))
TINY_STEP = ["backbone.name=tiny", "input.frames=4", "input.image_size=32", "input.n_mels=32", "input.n_frames=64"]
TINY_RUN = ["dataset.clips_train=48", "dataset.clips_val=16", "dataset.clips_test=16", "train.epochs=1",
            "train.batch_size=8", "train.eval_batch_size=16", "backbone.embed_dim=16", "backbone.depth=2",
            "backbone.num_heads=2"]  # fmt: skip
CURVE_WINDOW, CURVE_TOL, CURVE_TAIL, CURVE_TAIL_TOL = 20, 0.05, 50, 0.03


class Log:
    """Prints and keeps every line and every figure: ``results.json`` and ``summary.md``."""

    def __init__(self, out: Path, dry: bool):
        self.out, self.dry, self.lines, self.results = out, dry, [], {"figures": {}}

    def __call__(self, line: str) -> None:
        print(line, flush=True)
        self.lines.append(line)

    def figure(self, name: str, value: str, target: str, met: bool | None) -> None:
        """One figure against its goal: printed as ``name: value (target ...)`` and a row of the summary's table."""
        self(f"{name}: {value} (target {target})")
        self.results["figures"][name] = {"value": value, "target": target, "met": met}

    def save(self) -> None:
        dev = self.results.get("device", {})
        head = f"# bench/gpu.py on {dev.get('name')} (torch {dev.get('torch')})\n\n"
        if self.dry:
            head += "Dry run at tiny size on the CPU: the code paths run; no figure below is a measurement.\n\n"
        rows = ["| figure | value | target | status |", "| --- | --- | --- | --- |"]
        for name, f in self.results["figures"].items():
            status = "dry run" if self.dry else {True: "met", False: "not met", None: "-"}[f["met"]]
            rows.append(f"| `{name}` | {f['value']} | {f['target']} | {status} |")
        failed = self.results.get("failed")
        tail = f"\nFailed parts: {', '.join(failed)}\n" if failed else ""
        body = "\n".join(rows) + "\n" + tail + "\n## Output\n\n```\n" + "\n".join(self.lines) + "\n```\n"
        (self.out / "summary.md").write_text(head + body)
        (self.out / "results.json").write_text(json.dumps(self.results, indent=2, sort_keys=True, default=str))


# -- 1. model steps vs timm's ViT-B/16 -------------------------------------------------------------------------------


def _timed(step, n: int, device: torch.device) -> float:
    """Seconds per step over ``n`` steps (synchronised at both ends: the device's time, not the host's)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    tick = time.perf_counter()
    for _ in range(n):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - tick) / n


def _ref_train_flops(vit: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    """FLOPs per image of a timm ViT training step, on a meta copy (as ``harness.models.complexity.train_flops``)."""
    model = meta_copy(vit).train()
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(images.to("meta")), labels.to("meta")).backward()
    return counter.get_total_flops() / images.shape[0]


def _pct(x: float) -> str:
    """A fraction as a percentage of 3 significant digits (41.2 %; a dry run's tiny MFU stays readable)."""
    return f"{100 * x:.3g} %"


def step_part(log: Log, device: torch.device, dry: bool, peak: float | None, rounds: int, block: int) -> None:
    for name, preset, batch_size in STEPS:
        row = measure_step(name, preset, 4 if dry else batch_size, device, dry, peak, rounds, block)
        log.results.setdefault("step", {})[name] = row
        n, batch_size, clips, ref_clips = row["tokens"], row["batch"], row["clips_per_s"], row["timm_clips_per_s"]
        log(
            f"  {name:8s} {n} tokens, batch {batch_size}: {clips:.1f} clips/s, {row['achieved_tflops']:.3g} TFLOP/s"
            + (f", MFU {_pct(row['mfu'])}" if "mfu" in row else "")
            + f"; timm ViT {ref_clips:.1f} clips/s"
            + (f", MFU {_pct(row['timm_mfu'])}" if "mfu" in row else "")
        )
        ratio = row["flop_throughput_vs_timm"]  # the goal's figure, as bench/step.py; clips/s beside it
        value = f"{ratio:.2f}x FLOP throughput ({row['clips_per_s_vs_timm']:.2f}x clips/s)"
        log.figure(f"step_vs_timm_vit[{name}]", value, ">= 0.9x", ratio >= 0.9)
        if "mfu" in row and name != "lavish":  # the goal is mbt's and vanilla's (LAVISH's: printed above)
            log.figure(f"mfu_bf16[{name}]", _pct(row["mfu"]), ">= 40 %", row["mfu"] >= 0.4)
        if device.type == "cuda":
            torch.cuda.empty_cache()


def measure_step(name: str, preset: str, batch_size: int, device: torch.device, dry: bool, peak: float | None,
                 rounds: int, block: int) -> dict:  # fmt: skip
    """One method's bf16 training step against timm's ViT over the same tokens: clips/s, FLOPs, MFU, ratios."""
    tiny = [*TINY_STEP, *(["method.fusion_layer=2"] if name in ("mbt", "vanilla") else [])]
    spec = load_profile(preset_path(preset), tiny if dry else [])
    bb, inp = spec.backbone, spec.input
    torch.manual_seed(0)
    method = METHODS.get(name).build(spec.method, bb, inp).to(device)
    task = TASKS.get(spec.task_name)(spec.task, inp.num_classes, method.embed_dim).to(device)
    flops = train_flops(method, task, inp, batch_size)["gflops"] * 1e9  # per clip, forward + backward, on meta
    batch = example_batch(inp, batch_size, device)
    batch["video"], batch["audio"] = torch.randn_like(batch["video"]), torch.randn_like(batch["audio"])
    batch["label"] = torch.randint(0, inp.num_classes, (batch_size,), device=device)
    batch = mark_complete(batch)  # host flags: every key present, no mask
    count = {"video": num_video_tokens, "audio": num_audio_tokens}
    tokens = getattr(getattr(method, "tokens", None), "audio_tokens", None)  # LAVISH's image-mode audio
    n = sum(tokens if (m == "audio" and tokens) else count[m](bb, inp) for m in method.modalities)
    vit = VisionTransformer(img_size=(16, 16 * n), patch_size=16, embed_dim=bb.embed_dim, depth=bb.depth,
                            num_heads=bb.num_heads, num_classes=inp.num_classes).to(device)  # fmt: skip
    images = torch.randn(batch_size, 3, 16, 16 * n, device=device)
    ref_flops = _ref_train_flops(vit, images, batch["label"])
    fused = device.type == "cuda"
    params = [p for m in (method, task) for p in m.parameters() if p.requires_grad]
    opt, ref_opt = torch.optim.AdamW(params, fused=fused), torch.optim.AdamW(vit.parameters(), fused=fused)

    def ours() -> None:
        opt.zero_grad(set_to_none=True)
        with autocast(device, "bf16"):
            loss = task.loss(method(batch), batch)
        loss.backward()
        opt.step()

    def ref() -> None:
        ref_opt.zero_grad(set_to_none=True)
        with autocast(device, "bf16"):
            loss = F.cross_entropy(vit(images), batch["label"])
        loss.backward()
        ref_opt.step()

    warm = 1 if dry else 3
    _timed(ours, warm, device), _timed(ref, warm, device)  # warm-up: kernels, allocator, optimizer state, autotuning
    times = [(_timed(ours, block, device), _timed(ref, block, device)) for _ in range(rounds)]
    t_ours, t_ref = statistics.median(a for a, _ in times), statistics.median(b for _, b in times)
    clips, ref_clips = batch_size / t_ours, batch_size / t_ref
    row = {"tokens": n, "batch": batch_size, "clips_per_s": clips, "timm_clips_per_s": ref_clips,
           "train_gflops_per_clip": flops / 1e9, "timm_train_gflops_per_clip": ref_flops / 1e9,
           "flop_throughput_vs_timm": (flops * clips) / (ref_flops * ref_clips), "clips_per_s_vs_timm":
           clips / ref_clips, "achieved_tflops": flops * clips / 1e12}  # fmt: skip
    if peak is not None:
        row["mfu"], row["timm_mfu"] = mfu(flops / 1e9, clips, peak), mfu(ref_flops / 1e9, ref_clips, peak)
    return row


# -- 2. a DeepSpeed bf16 trial through `harness run` ----------------------------------------------------------------


def _cli(args: list[str], out: Path, timeout: float) -> tuple[int, float, str]:
    """``harness ARGS`` in a subprocess (working directory OUT); (exit status, seconds, output tail)."""
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    tick = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "harness.cli", *args], cwd=out, env=env, capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip
    return done.returncode, time.perf_counter() - tick, (done.stdout + done.stderr)[-3000:]


def _sets(values: list[str]) -> list[str]:
    return [a for v in values for a in ("--set", v)]


def _common(cache: Path, dry: bool) -> list[str]:
    """Overrides of every run: where the synthetic data is cached (``--cache-dir``); the tiny size in a dry run."""
    return [f"cache_dir={cache}", *(TINY_RUN if dry else [])]


def deepspeed_part(log: Log, out: Path, cache: Path, dry: bool) -> None:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{out / 'mlflow.db'}"
    sets = ["name=gpu_deepspeed", "engine.name=deepspeed", "train.precision=bf16", *_common(cache, dry)]
    sets += ["train.peak_tflops=1.0"] if dry else []  # a CPU has no peak in the table: perf/mfu is logged anyway
    code, wall, tail = _cli(["run", str(REPO / "run.yaml"), "--tracking-uri", uri, *_sets(sets)], out, 600)
    if code != 0:
        raise RuntimeError(f"harness run exited {code}:\n{tail}")
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("gpu_deepspeed").experiment_id], max_results=1)
    m = run.data.metrics
    keys = ("test/top1", "perf/mfu", "perf/step_ms", "perf/data_wait_frac", "perf/train_samples_per_s", "perf/wall_s")
    row = {"wall_s": wall, **{k: m[k] for k in keys if k in m}, "precision": run.data.tags.get("harness.precision")}
    log.results["deepspeed"] = row
    log(
        f"  deepspeed bf16 mbt: {wall:.0f} s, precision {row['precision']}, "
        + ", ".join(f"{k} {row[k]:.4g}" for k in keys if k in row)
    )
    ok = row["precision"] == "bf16" and "test/top1" in row
    log.figure("deepspeed_bf16_trial", f"{'finished in bf16' if ok else 'not bf16'}, {wall:.0f} s", "a bf16 trial", ok)


# -- 3. a sweep sharing the GPU vs one trial at a time --------------------------------------------------------------


def sweep_part(log: Log, out: Path, cache: Path, dry: bool, cuda: bool) -> None:
    run = yaml.safe_load((REPO / "run.yaml").read_text())
    walls = {}
    for label, share, concurrent in (("shared", 0.25, 4), ("sequential", 1.0, 1)):
        gpu = share if cuda else 0  # no GPU (dry run): the same sweeps on CPU shares
        cpu = max(1, (os.cpu_count() or 4) // 4) if not dry else 0.5
        sweep = {**run, "name": f"gpu_sweep_{label}", "search": {"seed": {"grid": [0, 1, 2, 3]}},
                 "tune": {"max_concurrent_trials": concurrent, "resources": {"cpu": cpu, "gpu": gpu}}}  # fmt: skip
        sweep["train"] = {**run["train"], "epochs": 1 if dry else 5}
        path = out / f"sweep_{label}.yaml"
        path.write_text(yaml.safe_dump(sweep))
        sets = [s for s in _common(cache, dry) if not s.startswith("train.epochs")]
        args = ["sweep", str(path), "--tracking-uri", f"sqlite:///{out / 'mlflow.db'}", "--storage",
                str(out / "ray"), *_sets(sets)]  # fmt: skip
        code, wall, tail = _cli(args, out, 900)
        if code != 0:
            raise RuntimeError(f"harness sweep ({label}) exited {code}:\n{tail}")
        walls[label] = wall
        log(f"  sweep {label:10s} 4 trials, {concurrent} at a time, cpu {cpu}, gpu {gpu} each: {wall:.1f} s")
    ratio = walls["shared"] / walls["sequential"]
    log.results["sweep"] = {**walls, "makespan_ratio": ratio}
    log.figure("sweep_makespan[4 x 0.25 GPU / one at a time]", f"{ratio:.2f}x (Ray start-up in both)", "<= 0.5x",
               ratio <= 0.5)  # fmt: skip


# -- 4. fp32 vs bf16 loss curves --------------------------------------------------------------------------------------


def _to_device(batch: dict, split, device: torch.device) -> dict:
    """As the engines move a batch: tensors copied without blocking, the presence flags left on the host (the
    methods decide there whether a batch needs masks), then the split's ``on_device`` where it has one."""
    moved = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) and not k.endswith("_present") else v
             for k, v in batch.items()}  # fmt: skip
    return getattr(split, "on_device", lambda b: b)(moved)


def curve(precision: str, steps: int, cache: Path, dry: bool) -> list[float]:
    """The training loss of each of ``steps`` steps of the synthetic default at ``precision`` (torch engine step)."""
    from harness.config import load_config
    from harness.run.augment import augment
    from harness.run.engines.torch_engine import TorchEngine
    from harness.run.trial import build_dataset, build_model, seed_everything

    spec = load_config(REPO / "run.yaml", [f"train.precision={precision}", *_common(cache, dry)])
    engine = TorchEngine(spec, device="cpu" if dry else None)
    seed_everything(spec.seed)
    data = build_dataset(spec)
    method, task = build_model(spec, data.spec)
    method.to(engine.device), task.to(engine.device)
    enable_tf32(engine.device)
    model = torch.nn.ModuleDict({"method": method, "task": task})
    opt, train = engine.optimizer(model), data.splits["train"]
    sched = engine.schedule(opt, len(train) // spec.train.batch_size or 1)
    scaler = torch.amp.GradScaler(engine.device.type, enabled=engine.precision == "fp16")
    params = [p for p in model.parameters() if p.requires_grad]
    losses, epoch = [], 0
    method.train()
    while len(losses) < steps:
        for i, batch in enumerate(engine.train_batches(train, epoch)):
            batch = augment(_to_device(batch, train, engine.device), task, spec.train, key=(spec.seed, epoch, i))
            losses.append(engine.train_step(method, task, batch, opt, sched, scaler, params))
            if len(losses) == steps:
                break
        epoch += 1
    return [x.item() for x in losses]


def curves_part(log: Log, out: Path, cache: Path, dry: bool, steps: int) -> None:
    fp32, bf16 = curve("fp32", steps, cache, dry), curve("bf16", steps, cache, dry)
    (out / "curves.csv").write_text("step,fp32,bf16\n" + "".join(f"{i},{a},{b}\n" for i, (a, b) in
                                                                   enumerate(zip(fp32, bf16))))  # fmt: skip
    w = min(CURVE_WINDOW, steps)
    windows = [(statistics.mean(fp32[i : i + w]), statistics.mean(bf16[i : i + w])) for i in range(0, steps - w + 1, w)]
    worst = max(abs(b - a) / abs(a) for a, b in windows)
    tail = min(CURVE_TAIL, steps)
    a, b = statistics.mean(fp32[-tail:]), statistics.mean(bf16[-tail:])
    tail_diff = abs(b - a) / abs(a)
    agree = worst <= CURVE_TOL and tail_diff <= CURVE_TAIL_TOL
    log.results["curves"] = {"steps": steps, "window": w, "worst_window_rel_diff": worst,
                             "tail_rel_diff": tail_diff, "fp32_first": fp32[0], "fp32_tail_mean": a,
                             "bf16_tail_mean": b, "agree": agree}  # fmt: skip
    log(f"  loss fp32 {fp32[0]:.3f} -> {a:.3f}, bf16 {bf16[0]:.3f} -> {b:.3f} (means of the last {tail} steps)")
    verdict = "agree" if agree else "DISAGREE"
    value = f"worst {w}-step window {_pct(worst)}, last {tail} steps {_pct(tail_diff)}: {verdict}"
    target = f"windows <= {CURVE_TOL:.0%}, last {tail} <= {CURVE_TAIL_TOL:.0%}"
    log.figure(f"loss_curves_fp32_vs_bf16[{steps} steps]", value, target, agree)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="folder for results.json, summary.txt, curves.csv, mlflow.db")
    ap.add_argument("--dry-run", action="store_true", help="every part at tiny size on the CPU")
    ap.add_argument("--only", default=",".join(PARTS), help=f"comma-separated parts of {','.join(PARTS)}")
    ap.add_argument("--peak-tflops", type=float, default=None, help="the device's bf16 peak (default: the table)")
    ap.add_argument("--rounds", type=int, default=5, help="alternating timing rounds per model (step)")
    ap.add_argument("--block", type=int, default=5, help="steps per timed block (step)")
    ap.add_argument("--steps", type=int, default=200, help="steps per loss curve (curves)")
    ap.add_argument("--cache-dir", type=Path, default=None, help="the synthetic data's cache (default OUT/cache)")
    args = ap.parse_args(argv)
    parts = [p for p in args.only.split(",") if p]
    if unknown := set(parts) - set(PARTS):
        ap.error(f"--only: unknown part(s) {sorted(unknown)}; parts are {', '.join(PARTS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    cache = (args.cache_dir or args.out / "cache").resolve()
    cuda = torch.cuda.is_available() and not args.dry_run
    device = torch.device("cuda" if cuda else "cpu")
    enable_tf32(device)
    peak = peak_tflops(device, "bf16", args.peak_tflops if args.peak_tflops or not args.dry_run else 1.0)
    rounds, block, steps = (2, 1, 10) if args.dry_run else (args.rounds, args.block, args.steps)
    log, start = Log(args.out, args.dry_run), time.perf_counter()
    name = torch.cuda.get_device_name(device) if cuda else "cpu"
    log(
        f"bench/gpu.py on {name} (torch {torch.__version__}, peak {peak} TFLOP/s bf16"
        + (", dry run at tiny size)" if args.dry_run else ")")
    )
    log.results["device"] = {"name": name, "torch": torch.__version__, "bf16_peak_tflops": peak,
                             "dry_run": args.dry_run}  # fmt: skip
    failed = []
    for part in parts:
        tick = time.perf_counter()
        try:
            if part == "step":
                step_part(log, device, args.dry_run, peak, rounds, block)
            elif part == "deepspeed":
                deepspeed_part(log, args.out, cache, args.dry_run)
            elif part == "sweep":
                sweep_part(log, args.out, cache, args.dry_run, cuda)
            else:
                curves_part(log, args.out, cache, args.dry_run, steps)
        except Exception:  # one part's failure is reported; the others still run
            failed.append(part)
            log(f"{part}: FAILED\n{traceback.format_exc()}")
        log(f"  ({part}: {time.perf_counter() - tick:.0f} s)")
        log.save()
    log.results["failed"] = failed
    total = time.perf_counter() - start
    if not args.dry_run and set(parts) == set(PARTS):
        log.figure("total_wall_s", f"{total:.0f} s", "<= 480 s on one GPU", total <= 480)
    else:
        log(f"total: {total:.0f} s")
    log.save()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
