"""FLOPs: the harness's FlopCounterMode count against an analytic count, and against DeepSpeed's profiler.

The analytic count follows the same convention as the counter (2 x multiply-adds of matmuls, convolutions and
attention; norms, softmax and element-wise ops are not counted), written from each method's update rule:
a block over Nq queries attending over Nk keys costs 2·Nq·D·(4D + 2·r·D) + 4·Nq·Nk·D (qkv + proj + MLP, QKᵀ, AV).
Both counts are taken for one clip at the tiny preset (synthetic shapes) and at ViT-B/16 with MBT's AudioSet
inputs (built on the meta device). DeepSpeed's ``get_model_profile`` (its MACs x 2) is compared at the tiny size.

    .venv/bin/python bench/flops.py
"""

from __future__ import annotations

import json

import torch

from harness.models.backbones import num_audio_tokens, num_video_tokens
from harness.run.profile import load_profile, preset_path, profile

SETTINGS = {
    "vanilla": {"fusion_layer": 2, "readout": "gap"},
    "mbt": {"fusion_layer": 2, "bottleneck_tokens": 4, "readout": "gap"},
    "cross": {"fusion_layer": 2, "readout": "gap"},
    "late": {},
    "audio_only": {},
    "video_only": {},
}


def block(nq: int, nk: int, d: int, r: float) -> float:
    """FLOPs of one pre-LN ViT block: Nq queries attending over Nk keys (keys' own qkv not included)."""
    return 2 * nq * d * (4 * d + 2 * r * d) + 4 * nq * nk * d


def analytic(name: str, m: dict, bb, spec) -> float:
    """Forward FLOPs of one clip from the method's update rule (CLS tokens included, as the code has them)."""
    d, depth, r = bb.embed_dim, bb.depth, bb.mlp_ratio
    nv, na = num_video_tokens(bb, spec) + 1, num_audio_tokens(bb, spec) + 1
    embed = {"video": 2 * (nv - 1) * 3 * bb.tubelet * bb.patch_size**2 * d,
             "audio": 2 * (na - 1) * bb.audio_patch[0] * bb.audio_patch[1] * d}  # fmt: skip
    n = {"video": nv, "audio": na}
    used = {"audio_only": ["audio"], "video_only": ["video"]}.get(name, ["video", "audio"])
    lf = m.get("fusion_layer", depth)
    flops = sum(embed[x] for x in used)
    flops += sum(lf * block(n[x], n[x], d, r) for x in used)  # unimodal layers below Lf
    late_layers = depth - lf
    if name == "vanilla":
        flops += late_layers * block(nv + na, nv + na, d, r)
    elif name == "mbt":
        nb = m["bottleneck_tokens"]
        flops += late_layers * sum(block(n[x] + nb, n[x] + nb, d, r) for x in used)
    elif name == "cross":
        flops += late_layers * 2 * block(nv + na, nv + na, d, r)  # each modality runs the full joint sequence
    heads = 1 if m.get("readout") == "gap" else len(used)  # one shared head per scored embedding
    return flops + heads * 2 * d * spec.num_classes


def method_override(name: str, m: dict) -> str:
    """``--set method={...}``: replaces the preset's whole method section."""
    return "method=" + json.dumps({"name": name, **m})


def counted(name: str, m: dict, base: str) -> tuple[float, object, object]:
    """FlopCounterMode FLOPs of one clip (``harness profile`` on the meta device), with the backbone and input."""
    spec = load_profile(preset_path(base), [method_override(name, m)])
    return profile(spec)["gflops"] * 1e9, spec.backbone, spec.input


def deepspeed_flops(name: str, m: dict) -> tuple[float, float]:
    """DeepSpeed's profiler on the CPU-built tiny model, one clip: (its MACs x 2, its own FLOPs figure).

    Its FLOPs figure adds norms, softmax and element-wise ops, which the harness's convention leaves out; its
    MACs count the same matmuls, convolutions and attention products as FlopCounterMode.
    """
    from deepspeed.profiling.flops_profiler import get_model_profile

    from harness.models.complexity import example_batch
    from harness.registry import METHODS, TASKS

    spec = load_profile(preset_path("mbt_tiny"), [method_override(name, m)])
    method = METHODS.get(name).build(spec.method, spec.backbone, spec.input).eval()
    task = TASKS.get(spec.task_name)(spec.task, spec.input.num_classes, method.embed_dim)

    class Whole(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.method, self.task = method, task

        def forward(self, batch):
            return self.task.logits(self.method(batch), batch)

    flops, macs, _ = get_model_profile(Whole().eval(), kwargs={"batch": example_batch(spec.input)}, print_profile=False,
                                   as_string=False)  # fmt: skip
    return 2 * macs, flops


def main() -> None:
    worst = {"tiny": 0.0, "vit_b16": 0.0, "deepspeed": 0.0}
    for name, m in SETTINGS.items():
        settings = dict(m)
        for size, base in (("tiny", "mbt_tiny"), ("vit_b16", "mbt_b16_audioset")):
            got, backbone, spec = counted(name, settings, base)
            want = analytic(name, settings, backbone, spec)
            err = abs(got / want - 1)
            worst[size] = max(worst[size], err)
            print(f"  {name:10s} {size:8s} counter {got / 1e9:10.4f} GFLOPs  analytic {want / 1e9:10.4f}  "
                  f"diff {100 * err:.3f} %")  # fmt: skip
        ds, ds_all = deepspeed_flops(name, settings)
        got, _, _ = counted(name, settings, "mbt_tiny")
        err = abs(ds / got - 1)
        worst["deepspeed"] = max(worst["deepspeed"], err)
        print(
            f"  {name:10s} tiny     deepspeed 2xMACs {ds / 1e9:.6f} GFLOPs vs counter {got / 1e9:.6f}: "
            f"{100 * err:.3f} % (its own FLOPs figure, element-wise ops included: {ds_all / 1e9:.6f})"
        )
    print(f"flops_vs_analytic_tiny: {100 * worst['tiny']:.3f} % max (target < 1 %)")
    print(f"flops_vs_analytic_vit_b16: {100 * worst['vit_b16']:.3f} % max (target < 1 %)")
    print(f"flops_vs_deepspeed_tiny: {100 * worst['deepspeed']:.2f} % max (target < 5 %)")


if __name__ == "__main__":
    main()
