"""TNT: Transformer iN Transformer (Han et al., 2021), export-clean.

Inner transformers attend over the 4x4 "words" (pixels) of each 16x16 "sentence" (patch); an outer transformer
attends over patches. Parameter names follow timm's current TNT (= the official architecture), so timm
checkpoints load unchanged; official and legacy-timm checkpoints are mapped on load.

Export-friendly rewrites (exact): the non-overlapping `nn.Unfold` is a rank-4 reshape/permute chain instead of
an im2col gather, and the official in-place `outer_tokens[:, 1:] = ...` is a `cat`, not a ScatterND.
"""
from __future__ import annotations

import re

import torch
from torch import nn

from .base import EdgeModel
from .checkpoint import KeyLayout, StateDict, identity_convert
from .layers import (Dropout, DropPath, LayerNorm, Mlp, attend, drop_path_rates, first_token, init_vit_weights,
                     prepend_token, resample_abs_pos_embed, split_heads)
from .registry import IMAGENET_INCEPTION_MEAN, IMAGENET_INCEPTION_STD, Family, PretrainedCfg, Reported, register_family


def _cfg(**kwargs) -> PretrainedCfg:
    return PretrainedCfg(mean=IMAGENET_INCEPTION_MEAN, std=IMAGENET_INCEPTION_STD, crop_pct=0.9,
                         interpolation="bicubic", **kwargs)


VARIANTS = {
    "tnt_ti": dict(
        arch=dict(embed_dim=192, inner_dim=12, depth=12, num_heads_outer=3, num_heads_inner=2),
        cfg=_cfg(source="none: the paper configuration; neither the official repo nor timm publish weights"),
        aliases=("tnt_ti_patch16_224",),
        reported=Reported(params_m=6.08, gmacs=1.40, top1=73.9),
        description="TNT-Ti, the paper's tiny configuration (D=192, c=12)"),
    "tnt_s": dict(
        arch=dict(embed_dim=384, inner_dim=24, depth=12, num_heads_outer=6, num_heads_inner=4),
        cfg=_cfg(hf_hub_id="timm/tnt_s_patch16_224.in1k",
                 source="timm hub (converted from the official huawei-noah release tnt_s_81.5.pth.tar)"),
        aliases=("tnt_s_patch16_224",),
        reported=Reported(params_m=23.768584, gmacs=5.22, top1=81.5, top5=95.7),
        description="TNT-S, official architecture"),
    "tnt_b": dict(
        arch=dict(embed_dim=640, inner_dim=40, depth=12, num_heads_outer=10, num_heads_inner=4),
        cfg=_cfg(hf_hub_id="timm/tnt_b_patch16_224.in1k",
                 source="timm hub (converted from the official huawei-noah release tnt_b_82.9.pth.tar)"),
        aliases=("tnt_b_patch16_224",),
        reported=Reported(params_m=65.43, gmacs=14.05, top1=82.9, top5=96.3),
        description="TNT-B, official architecture"),
    "tnt_s_legacy": dict(
        arch=dict(embed_dim=384, inner_dim=24, depth=12, num_heads_outer=6, num_heads_inner=4, legacy=True),
        cfg=_cfg(hf_hub_id="timm/tnt_s_legacy_patch16_224.in1k",
                 source="timm hub (timm's original TNT port, also used by mmpretrain and PaddleClas)"),
        aliases=("tnt_s_legacy_patch16_224",),
        reported=Reported(params_m=23.76, gmacs=5.22, top1=81.512, top5=95.742),
        description="TNT-S, timm's legacy architecture (a different network with its own weights)"),
}


def unfold_patches(x: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, C, H, W) -> (B * H/p * W/p, C, p, p), patches in row-major order: `nn.Unfold(p, stride=p)` without im2col.

    Written as rank-4 reshapes and permutes (the textbook 6-D permute exceeds what the Neural Engine likes).
    """
    batch, channels, height, width = x.shape
    rows, cols = height // patch, width // patch
    x = x.reshape(batch * channels * rows, patch, cols, patch).permute(0, 2, 1, 3)  # (B*C*rows, cols, p, p)
    x = x.reshape(batch, channels, rows * cols, patch * patch).permute(0, 2, 1, 3)  # (B, N, C, p*p)
    return x.reshape(batch * rows * cols, channels, patch, patch)


class TntAttention(nn.Module):
    """TNT's attention: `qk` and `v` projections (names as upstream), no qkv bias by default."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = False) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qk = nn.Linear(dim, dim * 2, bias=qkv_bias)
        self.v = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k = split_heads(self.qk(x), self.num_heads, parts=2)
        (v,) = split_heads(self.v(x), self.num_heads)
        return self.proj(attend(q, k, v, x.shape[0], self.scale))


class TntBlock(nn.Module):
    """Inner transformer over words, fuse words into their patch, outer transformer over patches."""

    def __init__(self, dim: int, inner_dim: int, num_words: int, num_heads_outer: int, num_heads_inner: int,
                 mlp_ratio: float, qkv_bias: bool, drop_path: float, legacy: bool) -> None:
        super().__init__()
        self.legacy = legacy
        self.norm_in = LayerNorm(inner_dim)
        self.attn_in = TntAttention(inner_dim, num_heads_inner, qkv_bias)
        self.norm_mlp_in = LayerNorm(inner_dim)
        self.mlp_in = Mlp(inner_dim, int(inner_dim * 4), inner_dim)
        if legacy:  # LayerNorm per word, biased projection, no norm after it
            self.norm1_proj = LayerNorm(inner_dim)
            self.proj = nn.Linear(inner_dim * num_words, dim, bias=True)
        else:
            self.norm1_proj = LayerNorm(inner_dim * num_words)
            self.proj = nn.Linear(inner_dim * num_words, dim, bias=False)
            self.norm2_proj = LayerNorm(dim)
        self.norm_out = LayerNorm(dim)
        self.attn_out = TntAttention(dim, num_heads_outer, qkv_bias)
        self.drop_path = DropPath(drop_path)
        self.norm_mlp = LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), dim)

    def forward(self, words: torch.Tensor, patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        words = words + self.drop_path(self.attn_in(self.norm_in(words)))
        words = words + self.drop_path(self.mlp_in(self.norm_mlp_in(words)))
        batch, tokens, _ = patches.shape
        if self.legacy:
            fused = self.proj(self.norm1_proj(words).reshape(batch, tokens - 1, -1))
        else:
            fused = self.norm2_proj(self.proj(self.norm1_proj(words.reshape(batch, tokens - 1, -1))))
        # the official code assigns in place (a ScatterND in ONNX); cat is the same and exports cleanly
        patches = torch.cat([patches[:, :1], patches[:, 1:] + fused], dim=1)
        patches = patches + self.drop_path(self.attn_out(self.norm_out(patches)))
        return words, patches + self.drop_path(self.mlp(self.norm_mlp(patches)))


class PixelEmbed(nn.Module):
    """Image -> word tokens (B*N, words, inner_dim).

    Official/timm: split into patches, then a 7x7 stride-4 conv on each patch (zero padding at every patch
    border). Legacy: the conv runs over the whole image, then its output is split into patches.
    """

    def __init__(self, img_size: int, patch_size: int, in_chans: int, inner_dim: int, stride: int,
                 legacy: bool) -> None:
        super().__init__()
        self.patch_size, self.stride, self.legacy = patch_size, stride, legacy
        self.words_side = patch_size // stride
        self.proj = nn.Conv2d(in_chans, inner_dim, kernel_size=7, padding=3, stride=stride)

    def forward(self, x: torch.Tensor, pixel_pos: torch.Tensor) -> torch.Tensor:
        if self.legacy:
            x = unfold_patches(self.proj(x), self.words_side)
        else:
            x = self.proj(unfold_patches(x, self.patch_size))
        x = x + pixel_pos
        # contiguous once here: a transposed layout would propagate through the residual adds and turn every
        # Linear on the words into expand + bmm instead of one mm
        return x.reshape(x.shape[0], x.shape[1], -1).transpose(1, 2).contiguous()


class TNT(EdgeModel):
    family = "tnt"

    def __init__(self, img_size: int = 224, patch_size: int = 16, in_chans: int = 3, num_classes: int = 1000,
                 embed_dim: int = 768, inner_dim: int = 48, depth: int = 12, num_heads_inner: int = 4,
                 num_heads_outer: int = 12, mlp_ratio: float = 4.0, qkv_bias: bool = False,
                 drop_rate: float = 0.0, drop_path_rate: float = 0.0, first_stride: int = 4,
                 legacy: bool = False) -> None:
        super().__init__(img_size, in_chans, num_classes)
        if img_size % patch_size or patch_size % first_stride:
            from ..errors import EdgevitError
            raise EdgevitError(f"TNT needs img_size divisible by patch_size ({patch_size}) and patch_size by "
                               f"first_stride ({first_stride}); got img_size={img_size}")
        self.embed_dim = embed_dim
        self.grid = img_size // patch_size
        num_patches = self.grid * self.grid
        words_side = patch_size // first_stride
        num_words = words_side * words_side

        self.pixel_embed = PixelEmbed(img_size, patch_size, in_chans, inner_dim, first_stride, legacy)
        self.norm1_proj = LayerNorm(num_words * inner_dim)
        self.proj = nn.Linear(num_words * inner_dim, embed_dim)
        self.norm2_proj = LayerNorm(embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.patch_pos = nn.Parameter(torch.zeros(1, num_patches + 1, embed_dim))
        self.pixel_pos = nn.Parameter(torch.zeros(1, inner_dim, words_side, words_side))
        self.pos_drop = Dropout(drop_rate)
        self.blocks = nn.ModuleList([
            TntBlock(embed_dim, inner_dim, num_words, num_heads_outer, num_heads_inner, mlp_ratio, qkv_bias,
                     rate, legacy)
            for rate in drop_path_rates(drop_path_rate, depth)])
        self.norm = LayerNorm(embed_dim)
        self.head_drop = Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        init_vit_weights(self, self.cls_token, self.patch_pos, self.pixel_pos)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Image -> all patch tokens after the final norm, (B, 1 + N, D) with the cls token first."""
        self.check_input(x)
        batch = x.shape[0]
        words = self.pixel_embed(x, self.pixel_pos)
        patches = self.norm2_proj(self.proj(self.norm1_proj(words.reshape(batch, self.grid * self.grid, -1))))
        patches = self.pos_drop(prepend_token(self.cls_token, patches) + self.patch_pos)
        for block in self.blocks:
            words, patches = block(words, patches)
        return self.norm(patches)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(first_token(x))
        return x if pre_logits else self.head(x)


# --- checkpoint layouts -------------------------------------------------------------------------------------

_OFFICIAL_TO_TIMM = [  # (pattern, replacement) on official key names, applied in order
    (r"^outer_pos$", "patch_pos"),
    (r"^patch_embed\.", "pixel_embed."),
    (r"proj_norm1", "norm1_proj"),
    (r"proj_norm2", "norm2_proj"),
    (r"\.inner_norm1\.", ".norm_in."),
    (r"\.inner_attn\.", ".attn_in."),
    (r"\.inner_norm2\.", ".norm_mlp_in."),
    (r"\.inner_mlp\.", ".mlp_in."),
    (r"\.outer_norm1\.", ".norm_out."),
    (r"\.outer_attn\.", ".attn_out."),
    (r"\.outer_norm2\.", ".norm_mlp."),
    (r"\.outer_mlp\.", ".mlp."),
]


def _official_to_timm(state_dict: StateDict, model: nn.Module) -> StateDict:
    """The official huawei-noah layout -> timm's (what timm's `checkpoint_filter_fn` does)."""
    out = {}
    for key, value in state_dict.items():
        if key == "outer_tokens":  # registered but never used by the official model
            continue
        if key == "inner_pos":  # (1, words, c) added after flattening -> (1, c, side, side) added before
            _, channels, side, _ = model.pixel_pos.shape
            out["pixel_pos"] = value.permute(0, 2, 1).reshape(1, channels, side, side)
            continue
        for pattern, replacement in _OFFICIAL_TO_TIMM:
            key = re.sub(pattern, replacement, key)
        out[key] = value
    return out


def _is_legacy_timm(state_dict) -> bool:
    return "pixel_pos" in state_dict and "blocks.0.proj.bias" in state_dict \
        and "blocks.0.norm2_proj.weight" not in state_dict


LAYOUTS = (
    KeyLayout("official", detect=lambda sd: "outer_pos" in sd or "inner_pos" in sd, convert=_official_to_timm,
              description="huawei-noah Efficient-AI-Backbones tnt_pytorch (outer_pos, inner_pos, outer_tokens)"),
    KeyLayout("timm-legacy", detect=_is_legacy_timm, convert=identity_convert,
              description="timm before May 2025 / mmpretrain (per-word norm1_proj, biased block proj)"),
    KeyLayout("timm", detect=lambda sd: "patch_pos" in sd, convert=identity_convert,
              description="timm >= 1.0.16 (= edgevit)"),
    KeyLayout("edgevit", detect=lambda sd: True, convert=identity_convert),
)


def resize_pos_embed(state_dict: StateDict, model: TNT) -> tuple[StateDict, list[str]]:
    source = state_dict.get("patch_pos")
    target = model.patch_pos
    if source is None or source.shape == target.shape or source.shape[-1] != target.shape[-1]:
        return state_dict, []
    state_dict["patch_pos"] = resample_abs_pos_embed(source, (model.grid, model.grid), num_prefix_tokens=1)
    return state_dict, [f"resized patch_pos from {source.shape[1]} to {target.shape[1]} tokens "
                        f"(checkpoint trained at another image size)"]


register_family(Family(name="tnt", model_cls=TNT, layouts=LAYOUTS, head_keys=("head.",),
                       pos_embed_resizer=resize_pos_embed), VARIANTS)
