"""Small-input geometry: each family's smallest variant builds, runs and exports cleanly at 32x32; checkpoints
rebuild it."""
import json

import pytest
import torch

import edgevit
from edgevit.analysis import check_export_clean
from edgevit.errors import EdgevitError
from edgevit.models import build_model, get_variant, is_small_input, small_input_arch, variant_with

SMALLEST = ["tnt_ti", "t2t_vit_7", "nest_tiny", "crossvit_tiny_240"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_geometry_per_family_at_32():
    assert small_input_arch("tnt_ti", 32) == {"img_size": 32, "patch_size": 8, "first_stride": 2}
    assert small_input_arch("t2t_vit_7", 32) == {"img_size": 32, "soft_splits": ((5, 2, 2), (3, 2, 1), (3, 1, 1))}
    assert small_input_arch("nest_tiny", 32) == {"img_size": 32, "patch_size": 2}
    assert small_input_arch("crossvit_tiny_240", 32) == {"img_size": 32, "patch_size": (4, 8),
                                                         "img_scale": (1.0, 1.0)}


def test_token_grids_at_32():
    tnt = build_model("tnt_ti", img_size=32, num_classes=10, small_input=True)
    assert tnt.grid == 4 and tnt.pixel_pos.shape[-2:] == (4, 4)  # 4x4 patches of 4x4 two-pixel words
    t2t = build_model("t2t_vit_7", img_size=32, num_classes=10, small_input=True)
    assert t2t.tokens_to_token.num_patches == 64  # 4x reduction, not 16x (which would leave 2x2)
    nest = build_model("nest_tiny", img_size=32, num_classes=10, small_input=True)
    assert nest.block_size == 4 and nest.num_blocks == [16, 4, 1]
    crossvit = build_model("crossvit_tiny_240", img_size=32, num_classes=10, small_input=True)
    assert [embed.grid_size for embed in crossvit.patch_embed] == [(8, 8), (4, 4)]
    assert all(isinstance(resize, torch.nn.Identity) for resize in crossvit.resize)  # no resize branch


def test_widths_depths_heads_stay_the_variants():
    for name in SMALLEST:
        base, small = get_variant(name).arch, build_model(name, img_size=32, small_input=True).arch
        changed = {k for k in small if k not in base or small[k] != base[k]}
        assert changed <= {"img_size", "patch_size", "first_stride", "soft_splits", "img_scale"}, (name, changed)


def test_when_it_applies():
    assert is_small_input(get_variant("tnt_ti"), 56) and not is_small_input(get_variant("tnt_ti"), 64)
    assert is_small_input(get_variant("crossvit_tiny_240"), 60)
    assert small_input_arch("tnt_ti", 64) == {"img_size": 64}  # above 224 / 4: only the size changes
    assert small_input_arch("tnt_ti", 64, small_input=True)["patch_size"] == 8  # forced
    assert small_input_arch("tnt_ti", 32, small_input=False) == {"img_size": 32}
    # create_model keeps its behaviour unless asked: only img_size changes
    assert build_model("tnt_ti", img_size=32).arch_overrides == {"img_size": 32}
    assert small_input_arch("nest_tiny", 28) == {"img_size": 28, "patch_size": 1}  # 2-px patches do not tile 28


@pytest.mark.parametrize("name,size,match", [
    ("tnt_ti", 36, "divisible by 8.*Use 32 or 40"),
    ("crossvit_tiny_240", 28, "divisible by 8"),
    ("t2t_vit_7", 30, "divisible by 4"),
    ("nest_tiny", 30, "divisible by 4"),
    ("crossvit_9_dagger_240", 32, "no small-input form"),
])
def test_sizes_that_do_not_tile(name, size, match):
    with pytest.raises(EdgevitError, match=match):
        small_input_arch(name, size)


def test_variant_with_arch_overrides():
    variant = variant_with(get_variant("tnt_ti"), arch={"img_size": 32, "in_chans": 1, "num_classes": 10,
                                                        "patch_size": 8, "first_stride": 2})
    assert variant.cfg.input_size == (1, 32, 32) and variant.cfg.num_classes == 10 and len(variant.cfg.mean) == 1
    assert variant_with(get_variant("tnt_ti"), img_size=64, arch={"img_size": 32}).arch["img_size"] == 64


@pytest.mark.parametrize("name", SMALLEST)
@pytest.mark.parametrize("in_chans", [1, 3])
def test_smallest_variants_build_run_and_export_at_32(name, in_chans):
    torch.manual_seed(0)
    model = build_model(name, img_size=32, in_chans=in_chans, num_classes=10, small_input=None).eval()
    with torch.no_grad():
        logits = model(torch.randn(2, in_chans, 32, 32))
    assert logits.shape == (2, 10) and torch.isfinite(logits).all()
    report = check_export_clean(model)
    assert report.violations == [], report.violations


def test_t2t_default_soft_splits_unchanged():
    model = build_model("t2t_vit_7")
    assert model.tokens_to_token.num_patches == 196
    assert model.tokens_to_token.attention1.kqv.in_features == 3 * 7 * 7
    assert model.tokens_to_token.project.in_features == 64 * 3 * 3


def test_checkpoint_with_overrides_rebuilds_the_model(tmp_path):
    torch.manual_seed(0)
    model = build_model("nest_tiny", img_size=32, in_chans=1, num_classes=10, small_input=True).eval()
    metadata = {"variant": "nest_tiny", "arch_overrides": model.arch_overrides, "mean": [0.3], "std": [0.35],
                "num_classes": 10, "labels": "fashion-mnist", "data": "fashion-mnist", "epoch": 1}
    path = tmp_path / "trained.pt"
    torch.save({"state_dict": model.state_dict(), "edgevit": metadata}, path)
    rebuilt = edgevit.create_model("nest_tiny", weights=path)
    assert rebuilt.arch == model.arch and rebuilt.pretrained_cfg["input_size"] == [1, 32, 32]
    assert rebuilt.pretrained_cfg["mean"] == [0.3] and rebuilt.pretrained_cfg["labels"] == "fashion-mnist"
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x))
    # the same metadata as JSON in a safetensors header (lists become tuples again)
    from safetensors.torch import save_file
    save_file(model.state_dict(), str(tmp_path / "trained.safetensors"),
              metadata={"edgevit": json.dumps(metadata)})
    from_safetensors = edgevit.create_model("nest_tiny", weights=tmp_path / "trained.safetensors")
    with torch.no_grad():
        assert from_safetensors.arch == model.arch and torch.equal(from_safetensors(x), model(x))
    with pytest.raises(EdgevitError, match="holds a trained nest_tiny"):
        edgevit.create_model("nest_base", weights=path)
    with pytest.raises(EdgevitError, match="written by `edgevit train`"):  # a plain 224 model: a hint, not a puzzle
        edgevit.load_checkpoint(build_model("nest_tiny", num_classes=10), path)
