"""NesT: the timm fixture reproduces, every upstream key layout maps, the export rewrites are exact."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

import edgevit
from edgevit.analysis import check_export_clean
from edgevit.errors import EdgevitError
from edgevit.models import build_model, map_state_dict, read_state_dict, resolve_name
from edgevit.models.nest import Nest, blockify, deblockify, max_pool_padded
from helpers import assert_close, load_fixture, upstream_keys

FIXTURE = "nest_tiny_timm"
VARIANT_NAMES = edgevit.list_models(family="nest")
# A NesT small enough to build, run and export in a second (the fixture's hyperparameters, own weights).
SMALL = dict(img_size=32, patch_size=2, num_levels=3, embed_dims=(16, 32, 64), num_heads=(1, 2, 4),
             depths=(1, 1, 2), num_classes=10)


def _legacy_keys(state_dict: dict) -> dict:
    """timm's pre-July-2021 names for a current timm state_dict (the inverse of the timm-legacy mapping)."""
    renamed = {}
    for key, value in state_dict.items():
        if key.startswith("levels."):
            level, rest = key[len("levels."):].split(".", 1)
            if rest == "pos_embed":
                key = f"pos_embed_{level}"
            elif rest.startswith("transformer_encoder."):
                key = f"ls_transformer_encoder.{level}.{rest[len('transformer_encoder.'):]}"
            elif rest.startswith("pool."):
                key = f"ls_block_aggregation.{int(level) - 1}.{rest[len('pool.'):]}"
        renamed[key] = value
    return renamed


def _timm_blockify(x: torch.Tensor, block_size: int) -> torch.Tensor:
    batch, height, width, channels = x.shape
    x = x.reshape(batch, height // block_size, block_size, width // block_size, block_size, channels)
    return x.transpose(2, 3).reshape(batch, -1, block_size * block_size, channels)


def _timm_deblockify(x: torch.Tensor, grid: int, block_size: int) -> torch.Tensor:
    batch, _, _, channels = x.shape
    x = x.reshape(batch, grid, grid, block_size, block_size, channels)
    return x.transpose(2, 3).reshape(batch, grid * block_size, grid * block_size, channels)


def _timm_attention(attn, x: torch.Tensor) -> torch.Tensor:
    """timm's NesT attention on (B, T, N, C): 5-D matmuls, output permuted head-minor before proj."""
    batch, blocks, tokens, channels = x.shape
    heads = attn.num_heads
    qkv = attn.qkv(x).reshape(batch, blocks, tokens, 3, heads, channels // heads).permute(3, 0, 4, 1, 2, 5)
    q, k, v = qkv.unbind(0)
    weights = ((q * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
    out = (weights @ v).permute(0, 2, 3, 4, 1).reshape(batch, blocks, tokens, channels)
    return attn.proj(out)


# --- 1. fixture ----------------------------------------------------------------------------------------------

def test_timm_fixture_reproduces_logits_and_features():
    hyper, path, arrays, tolerance, _ = load_fixture("timm", FIXTURE)
    model = Nest(**hyper).eval()  # timm's Nest default pad_type '' (symmetric), as the fixture was built
    report = edgevit.load_checkpoint(model, path)
    assert report.layout == "timm"
    assert report.messages == []
    with torch.no_grad():
        features = model.forward_features(arrays["x"])
        logits = model.forward_head(features)
    assert_close(logits, arrays["logits"], tolerance, f"{FIXTURE} logits")
    assert_close(features, arrays["features"], tolerance, f"{FIXTURE} features")


def test_timm_fixture_needs_its_pad_type():
    hyper, path, arrays, _, _ = load_fixture("timm", FIXTURE)
    model = Nest(**hyper, pad_type="same").eval()
    edgevit.load_checkpoint(model, path)
    with torch.no_grad():
        assert (model(arrays["x"]) - arrays["logits"]).abs().max() > 1e-3


def test_legacy_timm_checkpoint_reproduces_fixture(tmp_path):
    hyper, path, arrays, tolerance, _ = load_fixture("timm", FIXTURE)
    legacy = tmp_path / "legacy.safetensors"
    save_file(_legacy_keys(read_state_dict(path)[0]), str(legacy))
    model = Nest(**hyper).eval()
    assert edgevit.load_checkpoint(model, legacy).layout == "timm-legacy"
    with torch.no_grad():
        assert_close(model(arrays["x"]), arrays["logits"], tolerance, "legacy-layout logits")


# --- 2. full-size key files ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", VARIANT_NAMES)
def test_upstream_key_file_maps(name):
    state_dict, meta = upstream_keys("timm", name)
    with torch.device("meta"):
        model = build_model(name)
    mapped, layout, messages = map_state_dict(model, state_dict)
    assert layout == "timm"
    assert messages == []
    assert sum(v.numel() for v in mapped.values()) == meta["num_params"]
    assert {k: v.shape for k, v in mapped.items()} == {k: v.shape for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name", ["nest_tiny_jx", "nest_base_jx"])
def test_legacy_key_layout_maps(name):
    state_dict, _ = upstream_keys("timm", name)
    with torch.device("meta"):
        model = build_model(name)
    _, layout, _ = map_state_dict(model, _legacy_keys(state_dict))
    assert layout == "timm-legacy"


def test_names_and_aliases():
    assert set(VARIANT_NAMES) == {"nest_tiny", "nest_small", "nest_base",
                                  "nest_tiny_jx", "nest_small_jx", "nest_base_jx"}
    for size in ("tiny", "small", "base"):
        for alias in (f"jx_nest_{size}", f"nest_{size}_s196_224", f"timm/nest_{size}_jx.goog_in1k"):
            assert resolve_name(alias) == f"nest_{size}_jx"
        assert edgevit.get_variant(f"nest_{size}").arch["pad_type"] == ""
        assert edgevit.get_variant(f"nest_{size}_jx").arch["pad_type"] == "same"
        assert edgevit.get_variant(f"nest_{size}_jx").cfg.hf_hub_id == f"timm/nest_{size}_jx.goog_in1k"
        assert not edgevit.get_variant(f"nest_{size}").cfg.has_weights


# --- 3. export-friendly rewrites -----------------------------------------------------------------------------

def test_blockify_rank4_equals_timm():
    x = torch.randn(2, 12, 12, 5)
    blocks = blockify(x, 4)
    assert torch.equal(blocks, _timm_blockify(x, 4))
    assert torch.equal(deblockify(blocks, (3, 3), 4), _timm_deblockify(blocks, 3, 4))
    assert torch.equal(deblockify(blocks, (3, 3), 4), x)


@pytest.mark.parametrize("shape", [(2, 3, 8, 10), (1, 4, 28, 28), (1, 2, 56, 56)])
def test_same_max_pool_equals_minus_inf_pad(shape):
    x = torch.randn(shape)
    reference = F.max_pool2d(F.pad(x, (0, 1, 0, 1), value=float("-inf")), kernel_size=3, stride=2)
    assert torch.equal(max_pool_padded(x, "same"), reference)


@pytest.mark.parametrize("shape", [(2, 3, 8, 10), (1, 4, 7, 9), (1, 2, 56, 56)])
def test_symmetric_max_pool_equals_padded_max_pool(shape):
    x = torch.randn(shape)
    assert torch.equal(max_pool_padded(x, ""), F.max_pool2d(x, kernel_size=3, stride=2, padding=1))


def test_blockwise_attention_equals_timm():
    torch.manual_seed(0)
    model = Nest(**SMALL).eval()
    layer = model.levels[1].transformer_encoder[0]
    x = torch.randn(2, 4, 16, 32)
    with torch.no_grad():
        ours = layer.attn(x.reshape(8, 16, 32)).reshape(2, 4, 16, 32)
        assert_close(ours, _timm_attention(layer.attn, x), {"atol": 1e-5, "rtol": 0}, "block attention")


def test_mean_pool_equals_adaptive_avg_pool():
    torch.manual_seed(0)
    model = Nest(**SMALL).eval()
    features = torch.randn(2, 64, 4, 4)
    with torch.no_grad():
        expected = model.head(F.adaptive_avg_pool2d(features, 1).flatten(1))
        assert_close(model.forward_head(features), expected, {"atol": 1e-5, "rtol": 0}, "pooled head")


@pytest.mark.parametrize("pad_type", ["", "same"])
@pytest.mark.parametrize("form", ["native", "matmul"])
def test_small_model_exports_clean(pad_type, form):
    torch.manual_seed(0)
    model = Nest(**SMALL, pad_type=pad_type).eval()
    report = check_export_clean(model, layer_norm=form)
    assert not report.violations
    assert report.max_rank <= 4
    assert not [op for op in report.ops if "pad" in op]  # no -inf constant pad for 'same'


# --- 4. position-embedding resize ----------------------------------------------------------------------------

def test_pos_embed_resized_per_block_on_load(tmp_path):
    torch.manual_seed(0)
    source = Nest(**SMALL).eval()
    path = tmp_path / "small.safetensors"
    save_file(source.state_dict(), str(path))
    target = Nest(**dict(SMALL, img_size=48)).eval()  # block side 4 -> 6, still 16 / 4 / 1 blocks
    report = edgevit.load_checkpoint(target, path)
    assert len(report.messages) == 3
    assert all(m.startswith(f"resized levels.{i}.pos_embed from") for i, m in enumerate(report.messages))
    old, new = source.levels[0].pos_embed, target.levels[0].pos_embed
    assert new.shape == (1, 16, 36, 16)
    grids = old[0].reshape(16, 4, 4, 16).permute(0, 3, 1, 2)
    expected = F.interpolate(grids, size=(6, 6), mode="bicubic", align_corners=False)
    assert_close(new[0], expected.permute(0, 2, 3, 1).reshape(16, 36, 16), {"atol": 1e-6, "rtol": 0},
                 "per-block resize")
    with torch.no_grad():
        assert target(torch.randn(1, 3, 48, 48)).shape == (1, 10)


# --- errors a user can cause ---------------------------------------------------------------------------------

def test_wrong_input_size_is_a_clear_error():
    model = Nest(**SMALL).eval()
    with pytest.raises(EdgevitError, match="img_size=64"):
        model(torch.randn(1, 3, 64, 64))


def test_img_size_that_does_not_tile_is_a_clear_error():
    with pytest.raises(EdgevitError, match="multiple of"):
        Nest(**dict(SMALL, img_size=36))
    with pytest.raises(EdgevitError, match="pad_type"):
        Nest(**SMALL, pad_type="valid")
    with pytest.raises(EdgevitError, match="num_levels"):
        Nest(**dict(SMALL, depths=(1, 1)))

