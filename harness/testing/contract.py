"""The method contract, as a pytest class any project can run against the methods it registers.

Every check runs on every listed method (default: every registered one, plug-ins included) with its default options
and with each option set in its class's ``contract_variants``. A method is held to:

- shapes: ``embedding`` (B, D) with ``D = embed_dim``, per-modality outputs only for modalities it consumes, all finite;
- gradients reach every trainable parameter and no frozen one (stochastic depth on);
- determinism under a seed; a safetensors state-dict round trip gives the same outputs;
- missing modalities: an absent modality's input (random or NaN) changes nothing, a present one's does; a batch
  without ``*_present`` keys means both are present;
- the trainable count is ``requires_grad``;
- with ``precision = "bf16"`` every check runs with each forward under bf16 autocast (``train.precision: bf16``);
  :class:`CompileContract` checks ``torch.compile`` (``train.compile``) with ``fullgraph=True``: no graph break, so
  no host sync and no Python branch on a tensor, and eager's outputs and gradients.
- token outputs (``token_outputs``): ``tokens`` (and ``stages``) of the shapes :meth:`token_layout` declares, an absent
  modality's rows 0, a present one's not; they take part in every check above.

Usage in a plug-in's tests::

    from harness.testing import MethodContract

    class TestGMU(MethodContract):
        methods = ("gmu",)

Shapes of the tiny inputs: width 16, 3 layers, 4 frames of 16², a 16 x 48 spectrogram (Nv = 8, Na = 12 tokens).
"""

from __future__ import annotations

import types
from typing import Any, ClassVar

import pytest
import torch

from harness.api import FusionMethod, InputSpec
from harness.models.backbones import BackboneConfig
from harness.models.complexity import count_params
from harness.registry import METHODS

TINY_BACKBONE = dict(name="test", embed_dim=16, depth=3, num_heads=2, patch_size=8, tubelet=2, audio_patch=(8, 8))
TINY_SPEC = InputSpec(frames=4, image_size=16, n_mels=16, n_frames=48, num_classes=5)
# A 2-stage Swin-V2 on the tiny input (16² frames, 16 x 12 audio windows): a plain and a shifted-window block, patch
# merging, and both window masks; {"backbone": "swinv2"} in a variant builds the method on it.
SWIN_BACKBONE = dict(name="test_swin", family="swinv2", embed_dim=16, depth=3, num_heads=2, stage_depths=(2, 1),
                     window_size=2, patch_size=4, tubelet=1, audio_patch=(4, 4))  # fmt: skip
# Presence pattern (audio, video): both, audio only, video only, neither.
AUDIO_PRESENT = [True, True, False, False]
VIDEO_PRESENT = [True, False, True, False]


def make_batch(spec: InputSpec, audio_present: list[bool], video_present: list[bool], seed: int = 0) -> dict:
    """Random clips of ``spec`` with that presence pattern (one clip per entry)."""
    g = torch.Generator().manual_seed(seed)
    b = len(audio_present)
    return {
        "video": torch.randn(b, spec.frames, 3, spec.image_size, spec.image_size, generator=g),
        "audio": torch.randn(b, 1, spec.n_mels, spec.n_frames, generator=g),
        "label": torch.randint(0, spec.num_classes, (b,), generator=g),
        "id": [f"clip{i}" for i in range(b)],
        "audio_present": torch.tensor(audio_present),
        "video_present": torch.tensor(video_present),
    }


_AUTOCAST: torch.dtype | None = None  # set by MethodContract.precision: every built method's forward autocasts


def _autocast_forward(self: FusionMethod, batch: dict) -> dict:
    with torch.autocast("cpu", dtype=_AUTOCAST or torch.bfloat16):  # per forward, as the engines do
        return type(self).forward(self, batch)


def build(name: str, overrides: dict[str, Any], backbone: BackboneConfig, spec: InputSpec, seed: int = 0
          ) -> FusionMethod:  # fmt: skip
    """Registered method ``name`` with ``overrides`` (``backbone: swinv2`` picks :data:`SWIN_BACKBONE`), seeded;
    under a contract class with ``precision = "bf16"`` its forward runs under autocast (built outside it)."""
    overrides = dict(overrides)
    if overrides.pop("backbone", None) == "swinv2":
        backbone = BackboneConfig(**SWIN_BACKBONE, drop_path=backbone.drop_path)
    torch.manual_seed(seed)
    cls = METHODS.get(name)
    model = cls.build(cls.Config(name=name, **overrides), backbone, spec)
    if _AUTOCAST is not None:
        model.forward = types.MethodType(_autocast_forward, model)
    return model


def cases(names: tuple[str, ...] = ()) -> list[tuple[str, dict]]:
    """(method, options) for every method in ``names`` (default: every registered one) and each of its variants."""
    names = names or tuple(METHODS.names())
    return [(n, {}) for n in names] + [(n, dict(v)) for n in names for v in METHODS.get(n).contract_variants]


def case_id(name: str, overrides: dict) -> str:
    return name + "".join(f"-{k}={v}" for k, v in overrides.items())


def outputs(out: dict) -> dict[str, torch.Tensor]:
    """The output tensors, flattened to one dict."""
    flat = {"embedding": out["embedding"]}
    flat.update({f"per_modality.{m}": x for m, x in out.get("per_modality", {}).items()})
    flat.update({f"tokens.{m}": x for m, x in out.get("tokens", {}).items()})
    flat.update({f"stages.{i}.{m}": x for i, stage in enumerate(out.get("stages", ())) for m, x in stage.items()})
    return flat


def weighted_sum(out: dict) -> torch.Tensor:
    # Fixed random weights: a plain sum of LayerNorm outputs has zero gradient w.r.t. its input.
    g = torch.Generator().manual_seed(1)
    return sum((x * torch.randn(x.shape, generator=g)).sum() for x in outputs(out).values())


class _Cases:
    """Parametrises ``name, overrides`` over :func:`cases` of ``methods``; the tiny backbone and input shapes."""

    methods: ClassVar[tuple[str, ...]] = ()

    def pytest_generate_tests(self, metafunc) -> None:
        if {"name", "overrides"} <= set(metafunc.fixturenames):
            found = cases(self.methods)
            metafunc.parametrize("name,overrides", found, ids=[case_id(n, o) for n, o in found])

    @pytest.fixture
    def backbone(self) -> BackboneConfig:
        return BackboneConfig(**TINY_BACKBONE)

    @pytest.fixture
    def spec(self) -> InputSpec:
        return TINY_SPEC


class MethodContract(_Cases):
    """The contract tests; a subclass sets ``methods`` (registry names) or leaves it empty for every method.

    ``precision = "bf16"`` runs every check with each forward under bf16 autocast, as ``train.precision: bf16``.
    """

    precision: ClassVar[str] = "fp32"

    @pytest.fixture(autouse=True)
    def _precision(self):
        global _AUTOCAST
        _AUTOCAST = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[self.precision]
        try:
            yield
        finally:
            _AUTOCAST = None

    def test_shapes_and_finite(self, name, overrides, backbone, spec):
        model = build(name, overrides, backbone, spec)
        out = model(make_batch(spec, [True] * 3, [True] * 3))
        assert out["embedding"].shape == (3, model.embed_dim)
        assert set(out.get("per_modality", {})) <= set(model.modalities)
        for key, x in outputs(out).items():
            if not key.startswith(("tokens.", "stages.")):  # their shapes: test_token_outputs_match_layout
                assert x.shape == (3, model.embed_dim), key
            assert torch.isfinite(x).all(), key

    def test_gradients_reach_trainable_and_not_frozen(self, name, overrides, backbone, spec):
        model = build(name, overrides, backbone.model_copy(update={"drop_path": 0.1}), spec)
        params = dict(model.named_parameters())
        trainable = [n for n, p in params.items() if p.requires_grad]
        params[trainable[0]].requires_grad_(False)
        # Zero-initialised gates (LAVISH-style adapters) silence their branch's gradients at init by design; the
        # contract is that gradients can reach every trainable parameter, so move all parameters off their init.
        # A generator of its own leaves the global one, which draws the stochastic-depth masks, where build() put it.
        g = torch.Generator().manual_seed(2)
        with torch.no_grad():
            for p in params.values():
                p.add_(torch.randn(p.shape, generator=g) * 0.1)
        weighted_sum(model(make_batch(spec, [True] * 2, [True] * 2))).backward()
        frozen_with_grad = [n for n, p in params.items() if not p.requires_grad and p.grad is not None]
        assert not frozen_with_grad, f"frozen parameters got a gradient: {frozen_with_grad}"
        silent = [n for n, p in params.items() if p.requires_grad and (p.grad is None or not p.grad.any())]
        assert not silent, f"no gradient reaches {silent}"

    def test_deterministic_under_seed(self, name, overrides, backbone, spec):
        bb = backbone.model_copy(update={"drop_path": 0.2})
        batch = make_batch(spec, [True] * 2, [True] * 2)
        runs = []
        for _ in range(2):
            model = build(name, overrides, bb, spec, seed=3)
            torch.manual_seed(4)  # stochastic depth draws from the global generator in train mode
            runs.append(outputs(model(batch)))
        for key in runs[0]:
            assert torch.equal(runs[0][key], runs[1][key]), key

    def test_state_dict_round_trip_safetensors(self, name, overrides, backbone, spec, tmp_path):
        from safetensors.torch import load_file, save_file

        batch = make_batch(spec, [True] * 2, [True] * 2)
        source = build(name, overrides, backbone, spec, seed=0).eval()
        target = build(name, overrides, backbone, spec, seed=1).eval()
        assert not torch.equal(source(batch)["embedding"], target(batch)["embedding"])
        save_file(source.state_dict(), tmp_path / "model.safetensors")
        target.load_state_dict(load_file(tmp_path / "model.safetensors"), strict=True)
        expected, got = outputs(source(batch)), outputs(target(batch))
        for key in expected:
            assert torch.equal(expected[key], got[key]), key

    @pytest.mark.parametrize("placeholder", ["random", "nan"])
    def test_missing_modalities_are_masked(self, name, overrides, placeholder, backbone, spec):
        model = build(name, overrides, backbone, spec).eval()
        batch = make_batch(spec, AUDIO_PRESENT, VIDEO_PRESENT)
        before = outputs(model(batch))
        for key, x in before.items():
            assert torch.isfinite(x).all(), key

        swapped = dict(batch, audio=batch["audio"].clone(), video=batch["video"].clone())
        for m in ("audio", "video"):
            absent = ~batch[f"{m}_present"]
            fill = torch.randn_like(swapped[m][absent]) * 100 if placeholder == "random" else float("nan")
            swapped[m][absent] = fill
        after = outputs(model(swapped))
        for key in before:
            torch.testing.assert_close(after[key], before[key], rtol=0, atol=1e-6, msg=key)

        # The masks hide only absent data: changing a present clip's input changes its embedding.
        m = model.modalities[0]
        changed = dict(batch, **{m: batch[m] + torch.randn_like(batch[m])})
        assert not torch.allclose(outputs(model(changed))["embedding"][0], before["embedding"][0])

    def test_batch_without_presence_keys_means_present(self, name, overrides, backbone, spec):
        model = build(name, overrides, backbone, spec).eval()
        batch = make_batch(spec, [True] * 2, [True] * 2)
        bare = {k: v for k, v in batch.items() if not k.endswith("_present")}
        torch.testing.assert_close(model(bare)["embedding"], model(batch)["embedding"], rtol=0, atol=0)

    def test_token_outputs_match_layout(self, name, overrides, backbone, spec):
        model = build(name, overrides, backbone, spec).eval()
        if not model.token_outputs:
            pytest.skip(f"method {name!r} returns no token outputs (token_outputs = False)")
        layout = model.token_layout()
        out = model(make_batch(spec, AUDIO_PRESENT, VIDEO_PRESENT))
        b = len(AUDIO_PRESENT)
        assert set(out["tokens"]) == set(layout.modalities()) <= set(model.modalities)

        def check(tokens: dict, video: tuple | None, audio: tuple | None, where: str) -> None:
            expected = {}
            if video is not None:
                t, h, w, d = video
                expected["video"] = (b, t, h * w, d)
            if audio is not None:
                expected["audio"] = (b, *audio)
            assert {m: tuple(x.shape) for m, x in tokens.items()} == expected, where
            for m, x in tokens.items():
                present = torch.tensor(AUDIO_PRESENT if m == "audio" else VIDEO_PRESENT)
                rows = x.flatten(1).abs().amax(1)  # (B,)
                assert torch.isfinite(x).all(), f"{where}.{m}"
                assert (rows[~present] == 0).all() and (rows[present] > 0).all(), f"{where}.{m}: absent rows not 0"

        check(out["tokens"], layout.video, layout.audio, "tokens")
        if layout.audio is not None:
            assert len(layout.audio_time) == layout.audio[0]
            assert set(layout.audio_time) <= set(range(layout.audio_steps))
        assert len(out.get("stages", ())) == len(layout.stages)
        for i, (stage, shapes) in enumerate(zip(out.get("stages", ()), layout.stages)):
            check(stage, shapes.video, shapes.audio, f"stages.{i}")

    def test_trainable_count_is_requires_grad(self, name, overrides, backbone, spec):
        model = build(name, overrides, backbone, spec)
        total, trainable = count_params(model)
        assert total == sum(p.numel() for p in model.parameters())
        assert trainable == sum(p.numel() for p in model.parameters() if p.requires_grad) > 0
        frozen = [p for p in model.parameters() if p.requires_grad][:3]
        for p in frozen:
            p.requires_grad_(False)
        assert count_params(model) == (total, trainable - sum(p.numel() for p in frozen))


class CompileContract(_Cases):
    """``torch.compile`` of a method (``train.compile``) with ``fullgraph=True``: no graph break (no host sync, no
    Python branch on a tensor), and eager's outputs and gradients. ``compile_backend``: ``aot_eager`` (dynamo's
    graph capture and AOT autograd, no code generation) or ``inductor`` (what ``train.compile`` runs by default)."""

    compile_backend: ClassVar[str] = "aot_eager"

    def test_compiled_equals_eager(self, name, overrides, backbone, spec):
        import torch._dynamo

        from harness.api import mark_complete

        torch._dynamo.reset()
        eager = build(name, overrides, backbone, spec)
        compiled = build(name, overrides, backbone, spec)
        compiled.compile(backend=self.compile_backend, fullgraph=True)  # a graph break fails here
        for pattern in (([True] * 2, [True] * 2), ([True, False], [True, True])):
            batch = mark_complete(make_batch(spec, *pattern))  # what the engines hand over
            runs = []
            for model in (eager, compiled):
                model.zero_grad()
                out = outputs(model(batch))
                weighted_sum(out).backward()
                runs.append((out, {n: p.grad for n, p in model.named_parameters() if p.grad is not None}))
            (out_e, grad_e), (out_c, grad_c) = runs
            for key in out_e:
                torch.testing.assert_close(out_c[key], out_e[key], rtol=1e-4, atol=1e-5, msg=key)
            assert grad_c.keys() == grad_e.keys()
            for key in grad_e:
                torch.testing.assert_close(grad_c[key], grad_e[key], rtol=1e-3, atol=1e-5, msg=key)
