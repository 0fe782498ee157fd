"""T2T-ViT: official fixtures and key files load, the export rewrites are exact, pos_embed follows img_size."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import edgevit
from edgevit.errors import EdgevitError
from edgevit.models import build_model, list_models, map_state_dict
from edgevit.models.t2t import T2TViT, TokenPerformer, sinusoid_table
from helpers import FIXTURES, assert_close, load_fixture, reproduce_fixture, upstream_keys

TINY = dict(embed_dim=32, depth=1, num_heads=2, mlp_ratio=2.0, token_dim=8, num_classes=5)


@pytest.mark.parametrize("fixture", ["t2t_tiny_official_performer", "t2t_tiny_official_transformer"])
def test_official_fixture_reproduces_logits_and_features(fixture):
    hyper, path, arrays, tolerance, _ = load_fixture("official", fixture)
    model = T2TViT(**hyper).eval()  # the fixture's hyperparameters use the official constructor names
    features = reproduce_fixture(model, path, arrays, tolerance, "official", fixture)
    assert_close(features, arrays["features"], tolerance, f"{fixture} features (cls token after norm)")


def _key_files() -> list[str]:
    return sorted(p.stem for p in (FIXTURES / "official" / "keys").glob("t2t_vit_*.json"))


@pytest.mark.parametrize("name", _key_files() or ["t2t_vit_14"])
def test_official_key_file_maps_onto_variant(name):
    state_dict, meta = upstream_keys("official", name)
    assert meta["model"] == name
    with torch.device("meta"):
        model = build_model(name)
    mapped, layout, messages = map_state_dict(model, state_dict)
    assert layout == "official"
    assert messages == []
    assert set(mapped) == set(model.state_dict())


def test_384_variant_takes_the_224_keys_with_a_resized_table():
    state_dict, _ = upstream_keys("official", "t2t_vit_14")
    with torch.device("meta"):
        model = build_model("t2t_vit_14_384")
    _, layout, messages = map_state_dict(model, state_dict)
    assert layout == "official"
    assert messages == ["resized pos_embed from 197 to 577 tokens: regenerated the fixed sinusoidal table "
                        "for the new size, which is exact"]


def _official_performer_attention(layer: TokenPerformer, x: torch.Tensor) -> torch.Tensor:
    """The official `Token_performer.single_attn`, einsums and repeats as published."""
    k, q, v = torch.split(layer.kqv(x), layer.emb, dim=-1)

    def prm_exp(z):
        zd = ((z * z).sum(dim=-1, keepdim=True)).repeat(1, 1, layer.m) / 2
        wtz = torch.einsum("bti,mi->btm", z.to(layer.w.dtype), layer.w)
        return torch.exp(wtz - zd) / math.sqrt(layer.m)

    kp, qp = prm_exp(k), prm_exp(q)
    normaliser = torch.einsum("bti,bi->bt", qp, kp.sum(dim=1)).unsqueeze(dim=2)
    kptv = torch.einsum("bin,bim->bnm", v.to(kp.dtype), kp)
    y = torch.einsum("bti,bni->btn", qp, kptv) / (normaliser.repeat(1, 1, layer.emb) + 1e-8)
    return v + layer.proj(y)


def test_performer_bmm_form_equals_official_einsums():
    layer = TokenPerformer(147, 64).eval()
    x = torch.randn(2, 50, 147)
    with torch.no_grad():
        assert torch.allclose(layer.single_attn(x), _official_performer_attention(layer, x), atol=1e-5, rtol=1e-5)


def test_performer_keeps_float32_internals_in_half_precision():
    layer = TokenPerformer(147, 64).eval()
    x = torch.randn(1, 64, 147)
    with torch.no_grad():
        reference = layer(x)
        half = layer.half()(x.half())
    assert half.dtype == torch.float16
    assert torch.isfinite(half).all()
    assert torch.allclose(half.float(), reference, atol=2e-2, rtol=2e-2)


def test_performer_keeps_float32_internals_under_bf16_autocast():
    layer = TokenPerformer(147, 64).eval()
    x = torch.randn(1, 64, 147)
    seen = {}
    original = layer._random_feature_attention
    layer._random_feature_attention = lambda k, q, v: seen.setdefault("y", original(k, q, v))
    with torch.no_grad():
        reference = layer(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = layer(x)
    assert seen["y"].dtype == torch.float32  # the random features and normaliser were not run in bf16
    assert torch.isfinite(mixed).all()
    assert torch.allclose(mixed.float(), reference, atol=5e-2, rtol=5e-2)


def test_sinusoid_table_equals_official_numpy_formula():
    tokens, dim = 197, 384
    angles = np.array([[pos / np.power(10000, 2 * (j // 2) / dim) for j in range(dim)] for pos in range(tokens)])
    angles[:, 0::2] = np.sin(angles[:, 0::2])
    angles[:, 1::2] = np.cos(angles[:, 1::2])
    assert torch.equal(sinusoid_table(tokens, dim), torch.FloatTensor(angles).unsqueeze(0))


def test_checkpoint_at_one_size_loads_at_another(tmp_path):
    from safetensors.torch import save_file

    small = T2TViT(img_size=64, **TINY)
    path = tmp_path / "t2t_64.safetensors"
    save_file(small.state_dict(), str(path))
    large = T2TViT(img_size=96, **TINY).eval()
    report = edgevit.load_checkpoint(large, path)
    assert report.layout == "official"
    assert any("resized pos_embed from 17 to 37 tokens" in m for m in report.messages), report.messages
    assert torch.equal(large.pos_embed, sinusoid_table(37, TINY["embed_dim"]))
    assert torch.equal(large.tokens_to_token.attention1.w, small.tokens_to_token.attention1.w)
    with torch.no_grad():
        assert large(torch.randn(1, 3, 96, 96)).shape == (1, TINY["num_classes"])


def test_a_table_that_is_not_the_sinusoid_is_interpolated_not_replaced():
    small = T2TViT(img_size=64, **TINY)
    state_dict = small.state_dict()
    state_dict["pos_embed"] = state_dict["pos_embed"] + 0.1
    large = T2TViT(img_size=128, **TINY)
    report = edgevit.load_checkpoint(large, state_dict)
    assert any("bicubic" in m for m in report.messages), report.messages
    assert not torch.allclose(large.pos_embed, sinusoid_table(65, TINY["embed_dim"]), atol=1e-3)


def test_variants_names_and_sizes():
    model = edgevit.create_model("t2t_vit_7", img_size=160)
    assert model.pos_embed.shape == (1, 101, 256)
    assert edgevit.get_variant("T2t_vit_7").name == "t2t_vit_7"
    assert edgevit.get_variant("t2t_vit_14_384").cfg.input_size == (3, 384, 384)


def test_non_square_inputs_are_refused_clearly():
    with pytest.raises(EdgevitError, match="square"):
        T2TViT(img_size=(64, 96), **TINY)
    model = T2TViT(img_size=64, **TINY).eval()
    with pytest.raises(EdgevitError, match="square"):
        model(torch.randn(1, 3, 64, 96))
    with pytest.raises(EdgevitError, match="tokens_type"):
        T2TViT(img_size=64, tokens_type="convolution", **TINY)


def test_every_published_url_is_a_release_file():
    for name in list_models(family="t2t"):
        cfg = edgevit.get_variant(name).cfg
        if cfg.url:
            assert cfg.url.startswith("https://github.com/yitu-opensource/T2T-ViT/releases/download/main/")
            assert cfg.url.endswith(".pth.tar")
    with_weights = {n for n in list_models(family="t2t") if edgevit.get_variant(n).cfg.has_weights}
    assert with_weights == set(list_models(family="t2t")) - {"t2t_vit_14_resnext", "t2t_vit_14_wide"}



def test_performer_is_exact_where_the_official_exp_turns_subnormal():
    # Trained models push w·x - |x|²/2 below -87, where float32 exp is subnormal and ONNX Runtime and XNNPACK flush
    # it to zero: with flushing on, the shifted form must still equal the official formula in float64.
    torch.manual_seed(0)
    layer = TokenPerformer(147, 64).eval()
    x = torch.randn(2, 50, 147) * 6.0
    with torch.no_grad():
        _, q, _ = torch.split(layer.kqv(x), layer.emb, dim=-1)
        assert layer.prm_logits(q).max() < -87, "the inputs must reach the subnormal range to test anything"
        exact = _official_performer_attention(layer.double(), x.double()).float()
        layer.float()
        if not torch.set_flush_denormal(True):
            pytest.skip("this CPU cannot flush subnormals")
        try:
            shifted = layer.single_attn(x)
        finally:
            torch.set_flush_denormal(False)
    assert torch.allclose(shifted, exact, atol=1e-4, rtol=1e-4)


def test_performer_trains_where_the_official_epsilon_term_overflows():
    # Deep in the range above, exp(log(m * eps) - shifts) overflows to inf: the output is still the official limit
    # (y -> 0, only the skip through v is left), but inf * 0 in exp's backward made fine-tuning a trained T2T-ViT
    # (edgevit qat) turn every Performer weight into NaN after one step.
    torch.manual_seed(0)
    layer = TokenPerformer(147, 64)
    x = torch.randn(2, 50, 147) * 20.0
    with torch.no_grad():
        k, q, v = torch.split(layer.kqv(x), layer.emb, dim=-1)
        q_logits, k_logits = layer.prm_logits(q), layer.prm_logits(k)
        exponent = math.log(layer.m * 1e-8) - q_logits.amax(-1).min() - k_logits.max()
        assert exponent > 89, "the epsilon term must overflow float32 to test anything"
    layer.dp.p = 0.0
    y = layer.single_attn(x)
    assert torch.isfinite(y).all()
    assert torch.allclose(y, v + layer.proj(torch.zeros_like(v)), atol=1e-5)
    y.square().mean().backward()
    for used in (layer.kqv.weight, layer.kqv.bias, layer.proj.weight):
        assert used.grad is not None and torch.isfinite(used.grad).all()


def test_performer_maxima_as_pools_equal_amax():
    from edgevit.models.t2t import _all_max, _row_max

    x = torch.randn(2, 37, 13) * 20
    assert torch.equal(_row_max(x), x.amax(-1, keepdim=True))
    assert torch.equal(_all_max(x), x.amax((1, 2), keepdim=True))
