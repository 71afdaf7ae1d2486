"""Model step: each method's forward+backward throughput against a plain timm VisionTransformer, per FLOP.

The reference is ``timm.models.vision_transformer.VisionTransformer`` of the same width, depth and heads over the
same total token count (its image sized to give as many patches as the method has tokens: audio + video, or the one
modality a unimodal baseline reads). Each
side's throughput (clips/s, forward + backward + AdamW step over the trainable parameters, batch 32) is multiplied
by its forward FLOPs per clip (FlopCounterMode), so a method is not penalised for FLOPs it really adds. Every
registered method is timed (the token-fusion ones at early fusion with GAP). Steps alternate one by one (ABAB...,
so both sides see the same load on a shared machine) and the median of the per-pair ratios is kept.

Frozen-backbone methods (lavish, adapter, lora, prompt, frozen, ...) skip the weight gradients of the frozen ViT, so
their backward costs less than the reference's per forward FLOP: above 1.0x is expected there.

The patch embedding's own figure times forward + backward of the ``VideoPatchEmbed`` / ``AudioPatchEmbed`` of the
size (unfold + one matmul) against the same module's ``proj`` run as the Conv3d / Conv2d it stands for.

    .venv/bin/python bench/step.py [--size tiny|small] [--pairs 30] [--methods vanilla,mbt]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from timm.models.vision_transformer import VisionTransformer

from harness.models.backbones import AudioPatchEmbed, VideoPatchEmbed, num_audio_tokens, num_video_tokens
from harness.models.complexity import count_flops, example_batch
from harness.registry import METHODS, TASKS
from harness.run.profile import load_profile, preset_path

FUSION_SETTINGS = {  # token-fusion methods at early fusion with GAP read-out; the rest at their defaults
    "vanilla": {"fusion_layer": 0, "readout": "gap"},
    "mbt": {"fusion_layer": 0, "bottleneck_tokens": 4, "readout": "gap"},
    "cross": {"fusion_layer": 0, "readout": "gap"},
}
SIZES = {"tiny": [], "small": ["backbone.patch_size=16", "input.image_size=64", "backbone.embed_dim=192",
                               "backbone.num_heads=3"]}  # fmt: skip


def make_step(loss_fn, opt):
    def step() -> None:
        loss = loss_fn()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def interleaved_ratio(ours, ref, pairs: int) -> float:
    """Median over ``pairs`` of time(ref step) / time(our step), the two run alternately one step at a time."""
    ours(), ref(), ours(), ref()  # warm-up (lazy optimizer state, allocator, kernels)
    ratios = []
    for _ in range(pairs):
        t0 = time.perf_counter()
        ours()
        t1 = time.perf_counter()
        ref()
        t2 = time.perf_counter()
        ratios.append((t2 - t1) / (t1 - t0))
    return statistics.median(ratios)


def measure(name: str, size: str, batch_size: int, pairs: int) -> tuple[float, int, float, float]:
    """(median FLOP-throughput ratio vs timm's ViT, tokens, method MFLOPs/clip, ViT MFLOPs/clip)."""
    m = FUSION_SETTINGS.get(name, {})
    spec = load_profile(preset_path("mbt_tiny"), ["method=" + json.dumps({"name": name, **m}), *SIZES[size]])
    bb, inp = spec.backbone, spec.input
    torch.manual_seed(0)
    method = METHODS.get(name).build(spec.method, bb, inp)
    task = TASKS.get(spec.task_name)(spec.task, inp.num_classes, method.embed_dim)
    batch = example_batch(inp, batch_size)
    batch["video"], batch["audio"] = torch.randn_like(batch["video"]), torch.randn_like(batch["audio"])
    batch["label"] = torch.randint(0, inp.num_classes, (batch_size,))
    count = {"video": num_video_tokens, "audio": num_audio_tokens}
    n = sum(count[m](bb, inp) for m in method.modalities)  # the tokens this method runs through its blocks
    vit = VisionTransformer(img_size=(16, 16 * n), patch_size=16, embed_dim=bb.embed_dim, depth=bb.depth,
                            num_heads=bb.num_heads, num_classes=inp.num_classes)  # fmt: skip
    images = torch.randn(batch_size, 3, 16, 16 * n)
    params = [p for mod in (method, task) for p in mod.parameters() if p.requires_grad]
    ours = make_step(lambda: task.loss(method(batch), batch), torch.optim.AdamW(params))
    ref = make_step(lambda: torch.nn.functional.cross_entropy(vit(images), batch["label"]),
                    torch.optim.AdamW(vit.parameters()))  # fmt: skip
    with torch.no_grad():
        f_ours = count_flops(lambda: task.logits(method(example_batch(inp)), None))["gflops"]
        f_ref = count_flops(lambda: vit(images[:1]))["gflops"]
    r = interleaved_ratio(ours, ref, pairs)
    return r * f_ours / f_ref, n, f_ours * 1e3, f_ref * 1e3


def patch_embed_speedup(size: str, batch_size: int, pairs: int) -> float:
    """time(Conv3d + Conv2d) / time(unfold + matmul), forward + backward (weights), both patch embeddings."""
    spec = load_profile(preset_path("mbt_tiny"), SIZES[size])
    video, audio = VideoPatchEmbed(spec.backbone), AudioPatchEmbed(spec.backbone)
    x = example_batch(spec.input, batch_size)
    v, a = torch.randn_like(x["video"]), torch.randn_like(x["audio"])

    def matmul() -> None:
        (video(v).square().mean() + audio(a).square().mean()).backward()

    def conv() -> None:
        tokens_v = video.proj(v.transpose(1, 2)).flatten(2).transpose(1, 2)  # what VideoPatchEmbed computed before
        tokens_a = audio.proj(a).flatten(2).transpose(1, 2)
        (tokens_v.square().mean() + tokens_a.square().mean()).backward()

    return interleaved_ratio(matmul, conv, pairs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=list(SIZES), default="tiny")
    ap.add_argument("--pairs", type=int, default=30, help="interleaved step pairs per method")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--methods", default="", help="comma-separated; default every registered method")
    args = ap.parse_args()
    names = args.methods.split(",") if args.methods else METHODS.names()
    worst, fusion_worst = (float("inf"), ""), (float("inf"), "")
    for name in names:
        r, n, f_ours, f_ref = measure(name, args.size, args.batch, args.pairs)
        worst = min(worst, (r, name))
        if name in FUSION_SETTINGS or name in ("late", "audio_only", "video_only"):  # full fine-tuning
            fusion_worst = min(fusion_worst, (r, name))
        print(f"  {name:10s} {n} tokens: {r:.2f}x the FLOP throughput of timm's ViT "
              f"({f_ours:.3f} vs {f_ref:.3f} MFLOPs/clip)", flush=True)  # fmt: skip
    print(f"patch_embed_speedup[{args.size}]: {patch_embed_speedup(args.size, args.batch, args.pairs):.2f}x "
          "conv / matmul time, fwd+bwd (no target; > 1 = the matmul is faster)")  # fmt: skip
    if fusion_worst[1]:
        print(f"model_step_vs_timm_vit[{args.size}, fully trained]: {fusion_worst[0]:.2f}x worst ({fusion_worst[1]}) "
              "(target >= 0.9)")  # fmt: skip
    print(f"model_step_vs_timm_vit[{args.size}, all]: {worst[0]:.2f}x worst ({worst[1]}) (target >= 0.9)")


if __name__ == "__main__":
    main()
