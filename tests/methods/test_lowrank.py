"""The shared low-rank multimodal transformer (AVBERT): orthogonality, sharing counts, fusion stages.

The method contract runs on lowrank's option variants (``LowRank.contract_variants``) in ``test_contract.py``."""

from __future__ import annotations

import pytest
import torch

from harness.models.complexity import count_params
from methods.lowrank import FactorLayer, FactorLinear, LowRank, LowRankConfig, matched_gain


def build(backbone, spec, seed: int = 0, **fields) -> LowRank:
    torch.manual_seed(seed)
    return LowRank(LowRankConfig(name="lowrank", **fields), backbone, spec)


def orthogonals(model: LowRank) -> dict[str, torch.Tensor]:
    return {n: m.weight for n, m in model.named_modules() if n.split(".")[-2:-1] == ["mix"]}


@pytest.mark.parametrize("orthogonal_map", ["matrix_exp", "cayley"])
def test_private_middle_matrices_stay_orthogonal_under_adamw(orthogonal_map, backbone, spec, make_batch):
    model = build(backbone, spec, rank=8, orthogonal_map=orthogonal_map)
    head = torch.nn.Linear(model.embed_dim, spec.num_classes)
    before = {n: q.detach().clone() for n, q in orthogonals(model).items()}
    assert len(before) == 6 * 3  # sharing=all: one layer, six maps, groups video / audio / multimodal
    opt = torch.optim.AdamW([*model.parameters(), *head.parameters()], lr=1e-2, weight_decay=0.1)
    batch = make_batch(spec, [True] * 4, [True] * 4)
    for _ in range(5):
        loss = torch.nn.functional.cross_entropy(head(model(batch)["embedding"]), batch["label"])
        opt.zero_grad()
        loss.backward()
        opt.step()
    eye = torch.eye(8)
    for name, q in orthogonals(model).items():
        q = q.detach()
        assert (q - before[name]).abs().max() > 1e-3, f"{name} did not move"  # it trained ...
        torch.testing.assert_close(q @ q.T, eye, rtol=0, atol=1e-5, msg=name)  # ... and stayed orthogonal


def factor(n: int, m: int, groups: int, rank: int | None) -> int:
    """Parameters of one factor linear N -> M: shared U (M x r) + b (M), per group V_k (r x N) and Q_k (r x r)."""
    return n * m + m if rank is None else rank * m + m + groups * (rank * n + rank * rank)


def layer(d: int, hidden: int, groups: int, rank: int | None) -> int:
    """One layer: Q, K, V, attention output (D -> D), FFN in (D -> H), FFN out (H -> D), two LayerNorms."""
    maps = 4 * factor(d, d, groups, rank) + factor(d, hidden, groups, rank) + factor(hidden, d, groups, rank)
    return maps + 2 * 2 * d


@pytest.mark.parametrize("rank", [4, None])
def test_sharing_schemes_have_the_analytic_parameter_counts(rank, backbone, spec):
    d, h, lu, lm = backbone.embed_dim, 4 * backbone.embed_dim, 2, 3
    expected = {
        "none": 2 * lu * layer(d, h, 1, rank) + lm * layer(d, h, 1, rank),
        "layers": 3 * layer(d, h, 1, rank),  # one layer per encoder
        # one stack: depths 0-1 serve video, audio and multimodal; depth 2 only the multimodal encoder
        "modalities": lu * layer(d, h, 3, rank) + (lm - lu) * layer(d, h, 1, rank),
        "all": layer(d, h, 3, rank),  # U shared across layers and modalities; V_k, Q_k per group
    }
    rest = None
    for sharing, count in expected.items():
        model = build(backbone, spec, sharing=sharing, rank=rank, unimodal_layers=lu, multimodal_layers=lm)
        assert count_params(model.encoders)[0] == count, sharing
        outside = count_params(model)[0] - count  # tokenisers, embedding norms, token types: scheme-independent
        assert rest in (None, outside)
        rest = outside
    if rank is None:
        assert expected["modalities"] == expected["none"] - 2 * lu * layer(d, h, 1, None)  # full rank: no private part


def test_rank_none_is_a_plain_linear_layer(backbone):
    plain = FactorLinear(16, 64, ("video", "audio"), None, "matrix_exp", True)
    assert [type(m) for m in plain.modules()] == [FactorLinear, torch.nn.Linear]
    assert count_params(plain)[0] == count_params(torch.nn.Linear(16, 64))[0]
    x = torch.randn(3, 16)
    torch.testing.assert_close(plain(x, "video"), plain.shared(x), rtol=0, atol=0)
    bert = (4 * (16 * 16 + 16)) + (16 * 64 + 64) + (64 * 16 + 16) + 4 * 16  # a BERT layer at D = 16, H = 64
    cfg = LowRankConfig(rank=None)
    assert count_params(FactorLayer(backbone, cfg, ("video", "audio", "multimodal")))[0] == bert


def test_factor_linear_equation(backbone):
    torch.manual_seed(0)
    f = FactorLinear(16, 24, ("video", "audio"), 4, "matrix_exp", True)
    x = torch.randn(5, 16)
    u, b = f.shared.weight, f.shared.bias  # (24, 4), (24,)
    for k in ("video", "audio"):
        v, q = f.down[k].weight, f.mix[k].weight  # (4, 16), (4, 4)
        h = x @ v.T
        expected = (h / h.norm(dim=-1, keepdim=True)) @ q.T @ u.T + b
        torch.testing.assert_close(f(x, k), expected)
    assert not torch.allclose(f(x, "video"), f(x, "audio"))  # private factors differ per group


@pytest.mark.parametrize("fusion", ["late", "mid", "early"])
def test_video_embedding_depends_on_audio_only_with_a_multimodal_encoder(fusion, backbone, spec, make_batch):
    model = build(backbone, spec, fusion=fusion).eval()
    batch = make_batch(spec, [True] * 2, [True] * 2)
    other = dict(batch, audio=batch["audio"] + torch.randn_like(batch["audio"]))
    video, video_other = model(batch)["per_modality"]["video"], model(other)["per_modality"]["video"]
    if fusion == "late":
        torch.testing.assert_close(video_other, video, rtol=0, atol=0)
    else:
        assert not torch.allclose(video_other, video)
    has_unimodal = {"late": True, "mid": True, "early": False}[fusion]
    assert ("video" in model.encoders.depths) == has_unimodal
    assert ("multimodal" in model.encoders.depths) == (fusion != "late")


def test_config_check_names_the_key(backbone):
    assert LowRankConfig().layers(backbone.depth) == (1, 2)
    assert LowRankConfig(fusion="early").layers(4) == (0, 4) and LowRankConfig(fusion="late").layers(4) == (4, 0)
    errors = LowRankConfig(fusion="late", multimodal_layers=2, rank=32).check(backbone)
    assert errors == [
        ("method.multimodal_layers", "2 does not fit fusion=late (Lu >= 1, Lm = 0)"),
        ("method.rank", "32 exceeds the width D=16: not low-rank (use <= D or null)"),
    ]
    with pytest.raises(ValueError, match="method.unimodal_layers"):
        LowRank(LowRankConfig(fusion="mid", unimodal_layers=0), backbone, None)


@pytest.mark.parametrize("l2_normalize", [True, False])
@pytest.mark.parametrize(("n", "m", "r"), [(64, 64, 16), (64, 64, 64), (64, 256, 16), (256, 64, 32)])
def test_matched_init_gives_the_full_rank_xavier_output_scale(n, m, r, l2_normalize):
    torch.manual_seed(0)
    x = torch.nn.functional.layer_norm(torch.randn(2048, n), (n,))  # unit variance per entry, as after a LayerNorm
    full = torch.nn.Linear(n, m)
    torch.nn.init.xavier_uniform_(full.weight)
    target = full(x).std().item()  # ~ sqrt(2N / (N + M))
    stds = {}
    for init in ("matched", "xavier"):
        torch.manual_seed(1)
        stds[init] = FactorLinear(n, m, ("video",), r, "matrix_exp", l2_normalize, init)(x, "video").std().item()
    assert stds["matched"] == pytest.approx(target, rel=0.1)
    if l2_normalize:  # per-factor xavier after the normalisation: the map's output is sqrt(N)-ish times too small
        assert stds["xavier"] < 0.3 * target


def test_matched_gain_formulas():
    assert matched_gain(64, 64, 64, False) == pytest.approx(1.0)  # r = N = M without l2: per-factor xavier already fits
    assert matched_gain(64, 64, 64, True) == pytest.approx(8.0)  # l2: ‖normalize(Vᵀx)‖ = 1 instead of ~sqrt(N)


def test_factor_lr_scale_scales_the_adam_step_of_every_factor():
    """Same init, same batch: one AdamW step moves U, V_k (exactly) and Q_k (to first order) c times as far."""
    x, c = torch.randn(32, 16), 0.25
    moves = {}
    for scale in (1.0, c):
        torch.manual_seed(0)
        f = FactorLinear(16, 24, ("video",), 8, "matrix_exp", True, "matched", scale)
        before = {k: w.detach().clone() for k, w in factors(f).items()}
        opt = torch.optim.AdamW(f.parameters(), lr=1e-3, weight_decay=0.0)
        f(x, "video").pow(2).mean().backward()
        opt.step()
        moves[scale] = {k: w.detach() - before[k] for k, w in factors(f).items()}
    for k in ("U", "V"):  # before the step both runs hold the same U, V
        torch.testing.assert_close(moves[c][k], c * moves[1.0][k], rtol=1e-3, atol=1e-9, msg=k)
    torch.testing.assert_close(moves[c]["Q"], c * moves[1.0]["Q"], rtol=0.05, atol=1e-6)
    assert moves[1.0]["Q"].abs().max() > 1e-4  # Q moved at all


def factors(f: FactorLinear) -> dict[str, torch.Tensor]:
    return {"U": f.shared.weight, "V": f.down["video"].weight, "Q": f.mix["video"].weight}


def test_the_multimodal_embedding_is_the_codes_bert_embeddings(backbone, spec, make_batch):
    """AVBERT ``avbert.py`` + ``bert.py`` ``BertEmbeddings`` written out: LN(x + P[position_ids] + T[token_type_ids]),
    position ids restarting at 0 in each modality ([0..Nv, 0..Na], the BOS at 0), token types 0 / 1, eps 1e-12."""
    model = build(backbone, spec, fusion="early").eval()
    batch = make_batch(spec, [True] * 2, [True] * 2)
    seen = {}
    model.encoders.register_forward_pre_hook(lambda mod, args: seen.update({args[0]: args[1]}))  # returns None
    model(batch)
    z = model.tokens(batch, {m: torch.ones(2, dtype=torch.bool) for m in ("video", "audio")})
    nv, na = z["video"].shape[1], z["audio"].shape[1]
    position_ids = torch.cat([torch.arange(nv), torch.arange(na)])
    token_type_ids = torch.cat([torch.zeros(nv, dtype=torch.long), torch.ones(na, dtype=torch.long)])
    x = torch.cat([z["video"], z["audio"]], dim=1) + model.mm_pos[0][position_ids] + model.token_type[token_type_ids]
    norm = model.embed_norm["multimodal"]
    assert norm.eps == 1e-12
    expected = torch.nn.functional.layer_norm(x, (x.shape[-1],), norm.weight, norm.bias, eps=1e-12)
    torch.testing.assert_close(seen["multimodal"], expected, rtol=0, atol=1e-6)
    without = build(backbone, spec, fusion="early", multimodal_positions=False, layer_norm_eps=1e-6)
    assert without.mm_pos is None and without.embed_norm["multimodal"].eps == 1e-6


def test_code_init_is_what_the_avbert_code_runs(backbone, spec):
    """``init: code``: ``init_weights(model, FC_INIT_STD=0.01)`` over the model: every linear map's weight (U, V_k)
    and every embedding table N(0, 0.01), biases 0."""
    wide = backbone.model_copy(update={"embed_dim": 128, "num_heads": 2})
    model = build(wide, spec, init="code", factor_lr_scale=1.0, rank=64, sharing="none")
    weights = torch.cat([lin.weight.flatten() for name, lin in model.encoders.named_modules()
                         if isinstance(lin, torch.nn.Linear) and ".mix." not in name])  # fmt: skip
    assert weights.mean().abs() < 1e-3 and abs(weights.std().item() - 0.01) < 2e-4
    biases = [lin.bias for lin in model.encoders.modules() if isinstance(lin, torch.nn.Linear) and lin.bias is not None]
    assert all((b == 0).all() for b in biases)
    tables = torch.cat(
        [model.mm_pos.flatten(), model.token_type.flatten(), *(t.flatten() for t in model.tokens.pos.values())]
    )
    assert abs(tables.std().item() - 0.01) < 1e-3
    bert = build(wide, spec, init="bert", factor_lr_scale=1.0, rank=64, sharing="none")  # BERT's uncalled init
    assert abs(bert.encoders.stacks["video"][0].q.shared.weight.std().item() - 0.02) < 2e-3
