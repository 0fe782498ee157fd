"""TNT: upstream fixtures reproduce, every upstream key layout maps, the unfold rewrite is exact."""
import pytest
import torch
import torch.nn.functional as F

import edgevit
from edgevit.errors import EdgevitError
from edgevit.models import build_model, map_state_dict
from edgevit.models.tnt import TNT, unfold_patches
from helpers import assert_close, load_fixture, reproduce_fixture, upstream_keys


def tnt_from_upstream(hparams: dict) -> TNT:
    """Build from a fixture's constructor arguments (timm names, or the official repo's)."""
    if "outer_dim" in hparams:  # official huawei-noah names
        hparams = dict(img_size=hparams["img_size"], patch_size=hparams["patch_size"],
                       embed_dim=hparams["outer_dim"], inner_dim=hparams["inner_dim"], depth=hparams["depth"],
                       num_heads_outer=hparams["outer_num_heads"], num_heads_inner=hparams["inner_num_heads"],
                       qkv_bias=hparams["qkv_bias"], first_stride=hparams["inner_stride"],
                       num_classes=hparams["num_classes"])
    return TNT(**hparams).eval()


@pytest.mark.parametrize("source,name,layout", [
    ("timm", "tnt_tiny_timm", "timm"),
    ("timm", "tnt_tiny_timm_legacy", "timm-legacy"),
    ("official", "tnt_tiny_official", "official"),
])
def test_fixture_reproduces_reference_logits(source, name, layout):
    hparams, path, arrays, tolerance, _ = load_fixture(source, name)
    model = tnt_from_upstream(hparams)
    features = reproduce_fixture(model, path, arrays, tolerance, layout, name)
    reference = arrays["features"]
    ours = features if reference.dim() == 3 else model.forward_head(features, pre_logits=True)
    assert_close(ours, reference, tolerance, f"{name} features")


@pytest.mark.parametrize("source,key_file,variant,layout", [
    ("timm", "tnt_s_patch16_224", "tnt_s", "timm"),
    ("timm", "tnt_b_patch16_224", "tnt_b", "timm"),
    ("timm", "tnt_s_legacy_patch16_224", "tnt_s_legacy", "timm-legacy"),
    ("official", "tnt_s_patch16_224", "tnt_s", "official"),
    ("official", "tnt_b_patch16_224", "tnt_b", "official"),
])
def test_full_size_key_layouts_map(source, key_file, variant, layout):
    state_dict, _ = upstream_keys(source, key_file)
    with torch.device("meta"):
        model = build_model(variant)
    _, detected, messages = map_state_dict(model, state_dict)
    assert detected == layout and not messages


def test_official_weights_into_legacy_model_fail_naming_the_right_variant():
    state_dict, _ = upstream_keys("official", "tnt_s_patch16_224")
    with torch.device("meta"):
        legacy = build_model("tnt_s_legacy")
    with pytest.raises(EdgevitError, match=r"(?s)blocks\.0\.norm1_proj\.weight.*closest known variant: tnt_s "):
        map_state_dict(legacy, state_dict)


@pytest.mark.parametrize("channels,size,patch", [(3, 224, 16), (24, 56, 4), (2, 32, 8)])
def test_unfold_patches_equals_nn_unfold(channels, size, patch):
    x = torch.randn(2, channels, size, size)
    reference = F.unfold(x, patch, stride=patch).transpose(1, 2).reshape(-1, channels, patch, patch)
    assert torch.equal(unfold_patches(x, patch), reference)


def test_pos_embed_resized_when_image_size_differs(tmp_path):
    small = TNT(img_size=64, patch_size=16, embed_dim=32, inner_dim=4, depth=1, num_heads_outer=2,
                num_heads_inner=1, num_classes=5)
    path = tmp_path / "tnt64.pth"
    torch.save(small.state_dict(), path)
    large = TNT(img_size=96, patch_size=16, embed_dim=32, inner_dim=4, depth=1, num_heads_outer=2,
                num_heads_inner=1, num_classes=5)
    report = edgevit.load_checkpoint(large, path)
    assert any("resized patch_pos from 17 to 37 tokens" in m for m in report.messages)
    assert torch.equal(large.patch_pos[:, :1], small.patch_pos[:, :1])  # the cls position is kept as is
    assert large(torch.randn(1, 3, 96, 96)).shape == (1, 5)
