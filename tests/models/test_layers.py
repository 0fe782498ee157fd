"""Each export-friendly rewrite in layers.py equals the op it replaces."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgevit.models.layers import (Conv2d, LayerNorm, OneHotUnfold, SeparableResize, export_forms, layer_norm_form,
                                   multi_head_attention, resample_abs_pos_embed)


@pytest.mark.parametrize("shape", [(2, 17, 64), (2, 4, 16, 32), (3, 147)])
def test_matmul_layer_norm_equals_native(shape):
    torch.manual_seed(0)
    norm = LayerNorm(shape[-1], eps=1e-6)
    nn.init.normal_(norm.weight)
    nn.init.normal_(norm.bias)
    x = torch.randn(shape) * 3 + 1
    reference = F.layer_norm(x, (shape[-1],), norm.weight, norm.bias, 1e-6)
    with layer_norm_form(norm, "matmul"):
        assert (norm(x) - reference).abs().max() < 1e-5
    assert norm.form == "native"  # restored
    assert "averaging" not in norm.state_dict()  # checkpoints keep nn.LayerNorm's keys


@pytest.mark.parametrize("channels,size,kernel,stride,padding", [
    (3, 224, 7, 4, 2), (64, 56, 3, 2, 1), (64, 28, 3, 2, 1), (3, 32, 7, 4, 2),  # T2T at 224 and 32
    (8, 16, 5, 2, 2), (8, 8, 3, 1, 1), (4, 15, 3, 2, 1), (4, 9, 4, 3, 0)])  # small splits, odd sizes
@pytest.mark.parametrize("form", ["native", "gemm"])
def test_one_hot_unfold_equals_nn_unfold_in_both_layouts_and_forms(channels, size, kernel, stride, padding, form):
    x = torch.randn(2, channels, size, size)
    reference = F.unfold(x, kernel, stride=stride, padding=padding).transpose(1, 2)
    unfold = OneHotUnfold(channels, kernel, stride, padding)
    with export_forms(unfold, conv=form):
        assert torch.equal(unfold(x), reference)  # a copy of input values: exact
        assert torch.equal(unfold(x.permute(0, 2, 3, 1).contiguous(), layout="NHWC"), reference)
    assert unfold.form == "native"


@pytest.mark.parametrize("source,target", [(240, 224), (408, 384), (64, 56), (72, 64), (32, 48)])
def test_separable_resize_equals_bicubic_interpolate(source, target):
    x = torch.randn(2, 3, source, source)
    reference = F.interpolate(x, size=(target, target), mode="bicubic", align_corners=False)
    assert (SeparableResize((source, source), (target, target))(x) - reference).abs().max() < 1e-5


@pytest.mark.parametrize("head_minor", [False, True])
@pytest.mark.parametrize("batch, tokens, channels, heads", [(2, 10, 24, 4), (1, 10, 12, 1), (1, 9, 12, 1)])
def test_multi_head_attention_equals_reference(head_minor, batch, tokens, channels, heads):
    """(1, 10, 12, 1) takes the split-queries path of one head on one image; (1, 9, ...) the plain one."""
    q, k, v = (torch.randn(batch, tokens, channels) for _ in range(3))
    split = lambda t: t.reshape(batch, tokens, heads, channels // heads).transpose(1, 2)  # noqa: E731
    scale = (channels // heads) ** -0.5
    reference = torch.softmax(split(q) @ split(k).transpose(-1, -2) * scale, -1) @ split(v)  # (B, H, N, hd)
    order = (0, 2, 3, 1) if head_minor else (0, 2, 1, 3)
    reference = reference.permute(*order).reshape(batch, tokens, channels)
    assert (multi_head_attention(q, k, v, heads, scale, head_minor) - reference).abs().max() < 1e-5


def test_pos_embed_resample_keeps_prefix_and_grid_values():
    pos = torch.randn(1, 1 + 14 * 14, 8)
    resized = resample_abs_pos_embed(pos, (20, 20))
    assert resized.shape == (1, 401, 8) and torch.equal(resized[:, :1], pos[:, :1])
    assert resample_abs_pos_embed(pos, (14, 14)) is pos


@pytest.mark.parametrize("in_chans,out_chans,kernel,stride,padding,size", [
    (8, 16, 3, 1, 1, 14),    # NesT's block aggregation
    (4, 6, 3, 1, 0, 9),      # valid padding
    (5, 7, 1, 1, 0, 6),      # pointwise: the map itself is the patch matrix
    (3, 12, 4, 4, 0, 16),    # non-overlapping patches (NesT, CrossViT patch embeddings)
    (3, 12, 4, 4, 0, 18),    # ... with a remainder the strided conv drops
    (3, 8, 7, 4, 3, 32),     # no GEMM form: stays a native conv
])
def test_conv_gemm_form_equals_native(in_chans, out_chans, kernel, stride, padding, size):
    torch.manual_seed(0)
    conv = Conv2d(in_chans, out_chans, kernel, stride=stride, padding=padding)
    x = torch.randn(2, in_chans, size, size)
    reference = F.conv2d(x, conv.weight, conv.bias, stride=stride, padding=padding)
    with export_forms(conv, conv="gemm"):
        assert conv.form == "gemm"
        assert (conv(x) - reference).abs().max() < 1e-5
        assert (conv.channels_last(x, input_layout="NCHW") - reference.permute(0, 2, 3, 1)).abs().max() < 1e-5
        assert (conv.channels_last(x.permute(0, 2, 3, 1)) - reference.permute(0, 2, 3, 1)).abs().max() < 1e-5
    assert conv.form == "native"  # restored
    assert conv.has_gemm_form == (stride == 1 or (stride == kernel and padding == 0))
    assert list(conv.state_dict()) == ["weight", "bias"]  # nn.Conv2d's keys: checkpoints load unchanged


def test_conv_gemm_form_is_one_matrix_multiply_in_the_exported_graph():
    conv = Conv2d(8, 16, 3, padding=1)
    with export_forms(conv, conv="gemm"), torch.no_grad():
        program = torch.export.export(conv.eval(), (torch.randn(1, 8, 10, 10),), strict=True)
    ops = [str(node.target) for node in program.graph.nodes if node.op == "call_function"]
    assert "aten.linear.default" in ops and not any("conv" in op for op in ops)


def test_export_forms_rejects_unknown_kinds_and_forms():
    with pytest.raises(ValueError, match="conv form must be one of"):
        with export_forms(Conv2d(3, 3, 1), conv="winograd"):
            pass
    with pytest.raises(ValueError, match="no layer kind"):
        with export_forms(Conv2d(3, 3, 1), attention="flash"):
            pass
