"""CrossViT: timm fixtures reproduce, every upstream key layout maps, the export rewrites are exact."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

import edgevit
from edgevit.analysis import check_export_clean
from edgevit.models import build_model, map_state_dict, read_state_dict, resolve_name
from edgevit.models.crossvit import CrossAttention, CrossVit
from edgevit.models.layers import SeparableResize
from helpers import FIXTURES, assert_close, load_fixture, reproduce_fixture, upstream_keys

FIXTURE_NAMES = ("crossvit_tiny_timm", "crossvit_dagger_tiny_timm")
VARIANT_NAMES = edgevit.list_models(family="crossvit")


def _official_keys(state_dict: dict) -> dict:
    """The IBM/CrossViT release's names for a timm state_dict (pos_embed_0 -> pos_embed.0)."""
    renamed = {}
    for key, value in state_dict.items():
        if key.startswith(("pos_embed_", "cls_token_")):
            key = key[:-2] + "." + key[-1]
        renamed[key] = value
    return renamed


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_timm_fixture_reproduces_logits_and_features(name):
    hyper, path, arrays, tolerance, _ = load_fixture("timm", name)
    model = CrossVit(**hyper).eval()
    features = reproduce_fixture(model, path, arrays, tolerance, "timm", name)
    assert_close(features, arrays["features"], tolerance, f"{name} features")
    assert torch.equal(model.forward_head(features, pre_logits=True), features)


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_official_layout_loads_and_reproduces(name):
    hyper, path, arrays, tolerance, _ = load_fixture("timm", name)
    state_dict, _ = read_state_dict(path)
    model = CrossVit(**hyper).eval()
    report = edgevit.load_checkpoint(model, _official_keys(state_dict))
    assert report.layout == "official"
    with torch.no_grad():
        assert_close(model(arrays["x"]), arrays["logits"], tolerance, f"{name} via official keys")


def test_every_key_file_has_a_variant():
    files = sorted(p.stem for p in (FIXTURES / "timm" / "keys").glob("crossvit_*.json")) if FIXTURES.is_dir() else []
    if not files:
        pytest.skip("no CrossViT key files in the shared fixtures")
    assert set(files) == set(VARIANT_NAMES)


@pytest.mark.parametrize("name", VARIANT_NAMES)
def test_upstream_keys_map_onto_meta_model(name):
    state_dict, meta = upstream_keys("timm", name)
    with torch.device("meta"):
        model = build_model(name)
    assert model.state_dict().keys() == state_dict.keys()
    _, layout, messages = map_state_dict(model, state_dict)
    assert (layout, messages) == ("timm", [])
    _, layout, messages = map_state_dict(model, _official_keys(state_dict))
    assert (layout, messages) == ("official", [])
    assert tuple(meta["input_size"]) == tuple(model.pretrained_cfg["input_size"])
    assert sum(v.numel() for v in model.state_dict().values()) == meta["num_params"]


@pytest.mark.parametrize("sizes", [((240, 240), (224, 224)), ((408, 408), (384, 384)), ((64, 64), (56, 56)),
                                   ((72, 72), (64, 64))])
def test_separable_resize_equals_bicubic_interpolate(sizes):
    source, target = sizes
    x = torch.randn(2, 3, *source, generator=torch.Generator().manual_seed(0))
    expected = F.interpolate(x, size=target, mode="bicubic", align_corners=False)
    assert (SeparableResize(source, target)(x) - expected).abs().max() < 1e-5


def test_cross_attention_equals_timm_formula():
    torch.manual_seed(0)
    dim, heads, batch, tokens = 64, 4, 2, 17
    attention = CrossAttention(dim, heads).eval()
    x = torch.randn(batch, tokens, dim)
    # timm's CrossAttention.forward, with 4-D matmuls
    head_dim = dim // heads
    q = attention.wq(x[:, 0:1]).reshape(batch, 1, heads, head_dim).permute(0, 2, 1, 3)
    k = attention.wk(x).reshape(batch, tokens, heads, head_dim).permute(0, 2, 1, 3)
    v = attention.wv(x).reshape(batch, tokens, heads, head_dim).permute(0, 2, 1, 3)
    attn = ((q @ k.transpose(-2, -1)) * head_dim ** -0.5).softmax(dim=-1)
    expected = attention.proj((attn @ v).transpose(1, 2).reshape(batch, 1, dim))
    with torch.no_grad():
        assert (attention(x) - expected).abs().max() < 1e-5


def test_pos_embed_resized_on_load(tmp_path):
    source = build_model("crossvit_9_dagger_240")
    path = tmp_path / "crossvit_9_dagger_240.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    # 288 -> branches of 288 and 268 pixels: 24x24 and 17x17 tokens (the † stem rounds 268 / 16 up)
    model = edgevit.create_model("crossvit_9_dagger_240", weights=path, img_size=288)
    messages = model.load_report.messages
    assert "resized pos_embed_0 from 401 to 577 tokens" in " ".join(messages)
    assert "resized pos_embed_1 from 197 to 290 tokens" in " ".join(messages)
    assert torch.equal(model.cls_token_0, source.cls_token_0)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 288, 288)).shape == (1, 1000)


def test_fixture_size_model_is_export_clean():
    hyper, _, _, _, _ = load_fixture("timm", "crossvit_dagger_tiny_timm")
    model = CrossVit(**hyper).eval()
    # both LayerNorm forms of every full-size variant are checked in test_variants.py; this pins rank and ops
    report = check_export_clean(model)
    assert not report.violations, report.violations
    assert report.max_rank <= 4
    assert not any("upsample" in op or "select" in op for op in report.ops), report.ops


def test_aliases_and_config():
    assert resolve_name("crossvit_15_dagger_384") == "crossvit_15_dagger_408"
    assert resolve_name("crossvit_tiny_224") == "crossvit_tiny_240"
    assert resolve_name("timm/crossvit_9_240.in1k") == "crossvit_9_240"
    variant = edgevit.get_variant("crossvit_18_dagger_408")
    assert variant.cfg.input_size == (3, 408, 408) and variant.cfg.crop_pct == 1.0
    assert variant.cfg.hf_hub_id == "timm/crossvit_18_dagger_408.in1k"


def test_user_errors_are_clear():
    model = CrossVit(img_size=64, img_scale=(1.0, 0.875), patch_size=(8, 14), embed_dim=(32, 64),
                     depth=((1, 1, 0),), num_heads=(2, 2), mlp_ratio=(2, 2, 1), num_classes=10).eval()
    with pytest.raises(edgevit.EdgevitError, match="img_size=72"):
        model(torch.randn(1, 3, 72, 72))
    with pytest.raises(edgevit.EdgevitError, match="fusion depth 0"):
        CrossVit(depth=((1, 4, 1),) * 3)
    with pytest.raises(edgevit.EdgevitError, match="patch sizes 12 and 16"):
        CrossVit(patch_size=(8, 16), multi_conv=True)

