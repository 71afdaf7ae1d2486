"""Model step: each method's forward+backward throughput against a plain timm VisionTransformer, per FLOP.

The reference is ``timm.models.vision_transformer.VisionTransformer`` of the same width, depth and heads over the
same total token count (its image sized to give as many patches as the method has audio + video tokens). Each
side's throughput (clips/s, forward + backward + AdamW step, batch 32) is multiplied by its forward FLOPs per clip
(FlopCounterMode), so a method is not penalised for FLOPs it really adds; runs alternate and the median of
``--repeat`` is kept.

    .venv/bin/python bench/step.py [--size tiny|small] [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from timm.models.vision_transformer import VisionTransformer

from harness.backbones import num_audio_tokens, num_video_tokens
from harness.complexity import count_flops, example_batch
from harness.profile import load_profile, preset_path
from harness.registry import METHODS, TASKS

METHODS_TO_TIME = {
    "vanilla": {"fusion_layer": 0, "readout": "gap"},
    "mbt": {"fusion_layer": 0, "bottleneck_tokens": 4, "readout": "gap"},
    "cross": {"fusion_layer": 0, "readout": "gap"},
    "late": {},
}
SIZES = {"tiny": [], "small": ["backbone.patch_size=16", "input.image_size=64", "backbone.embed_dim=192",
                               "backbone.num_heads=3"]}  # fmt: skip


def clips_per_s(step, batch_size: int, steps: int = 10) -> float:
    step()  # warm-up
    t = time.perf_counter()
    for _ in range(steps):
        step()
    return batch_size * steps / (time.perf_counter() - t)


def make_step(loss_fn, opt):
    def step() -> None:
        loss = loss_fn()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def measure(name: str, m: dict, size: str, batch_size: int, repeat: int) -> tuple[float, int, float, float]:
    """(median FLOP-throughput ratio vs timm's ViT, tokens, method MFLOPs/clip, ViT MFLOPs/clip)."""
    spec = load_profile(preset_path("mbt_tiny"), ["method=" + json.dumps({"name": name, **m}), *SIZES[size]])
    bb, inp = spec.backbone, spec.input
    method = METHODS.get(name)(spec.method, bb, inp)
    task = TASKS.get(spec.task_name)(spec.task, inp.num_classes, method.embed_dim)
    batch = example_batch(inp, batch_size)
    batch["label"] = torch.randint(0, inp.num_classes, (batch_size,))
    n = num_video_tokens(bb, inp) + num_audio_tokens(bb, inp)
    vit = VisionTransformer(img_size=(16, 16 * n), patch_size=16, embed_dim=bb.embed_dim, depth=bb.depth,
                            num_heads=bb.num_heads, num_classes=inp.num_classes)  # fmt: skip
    images = torch.randn(batch_size, 3, 16, 16 * n)
    params = list(method.parameters()) + list(task.parameters())
    ours = make_step(lambda: task.loss(method(batch), batch), torch.optim.AdamW(params))
    ref = make_step(lambda: torch.nn.functional.cross_entropy(vit(images), batch["label"]),
                    torch.optim.AdamW(vit.parameters()))  # fmt: skip
    with torch.no_grad():
        f_ours = count_flops(lambda: task.logits(method(example_batch(inp)), None))["gflops"]
        f_ref = count_flops(lambda: vit(images[:1]))["gflops"]
    ratios = []
    for _ in range(repeat):
        a, b = clips_per_s(ours, batch_size), clips_per_s(ref, batch_size)
        ratios.append((a * f_ours) / (b * f_ref))
    return statistics.median(ratios), n, f_ours * 1e3, f_ref * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=list(SIZES), default="tiny")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args()
    worst = float("inf")
    for name, m in METHODS_TO_TIME.items():
        r, n, f_ours, f_ref = measure(name, m, args.size, args.batch, args.repeat)
        worst = min(worst, r)
        print(f"  {name:8s} {n} tokens: {r:.2f}x the FLOP throughput of timm's ViT "
              f"({f_ours:.3f} vs {f_ref:.3f} MFLOPs/clip)")  # fmt: skip
    print(f"model_step_vs_timm_vit[{args.size}]: {worst:.2f}x worst method (target >= 0.9)")


if __name__ == "__main__":
    main()
