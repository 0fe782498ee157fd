"""NesT: Aggregating Nested Transformers (Zhang et al., 2021), timm's parameter names.

Local self-attention inside non-overlapping image blocks, with a conv + max-pool "block aggregation" between
levels (56² -> 28² -> 14² tokens at 224 for the ImageNet models, 16 -> 4 -> 1 blocks of 14x14 tokens).

Export-friendly forms (each exact to what it replaces; tests/models/test_nest.py checks them):
- blockify / deblockify with rank-4 reshapes instead of timm's 6-D ones;
- attention per block on (B*T, N, C) as 3-D `bmm` (timm: 5-D matmuls), output channels head-minor so timm's
  `proj` weights load unchanged;
- the padded max pools (TF 'SAME' of the `_jx` weights, timm's symmetric one otherwise) as "replicate the edge
  rows and columns, then max_pool2d(3, 2)" instead of a -inf pad: a replicated value never exceeds the window
  maximum it joins;
- global average pool as a mean over dims (2, 3) of the NCHW map, which XNNPACK delegates;
- maps between levels channels-last (B, H, W, C), the layout of the blocks and of the convs' GEMM form.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import EdgevitError
from .base import EdgeModel
from .checkpoint import KeyLayout, StateDict, identity_convert
from .layers import Block, Conv2d, Dropout, LayerNorm, blockify, deblockify, drop_path_rates, resample_abs_pos_embed
from .registry import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, Family, PretrainedCfg, Reported, register_family

_NO_WEIGHTS = ("none: timm publishes no weights for the symmetric-pad {name}; the JAX weights need 'same' "
               "pooling, use {name}_jx")
_JAX_SOURCE = "Google Research (official JAX NesT, ImageNet-1k), converted to PyTorch by timm"


def _cfg(**kwargs) -> PretrainedCfg:
    # timm's cfg: crop 0.875 bicubic. The official JAX eval resizes bilinear (short side 256 -> crop 224).
    return PretrainedCfg(input_size=(3, 224, 224), mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD,
                         crop_pct=0.875, interpolation="bicubic", num_classes=1000, **kwargs)


_TINY = dict(embed_dims=(96, 192, 384), num_heads=(3, 6, 12), depths=(2, 2, 8), drop_path_rate=0.2)
_SMALL = dict(embed_dims=(96, 192, 384), num_heads=(3, 6, 12), depths=(2, 2, 20), drop_path_rate=0.3)
_BASE = dict(embed_dims=(128, 256, 512), num_heads=(4, 8, 16), depths=(2, 2, 20), drop_path_rate=0.5)

VARIANTS = {
    "nest_tiny": dict(
        arch=dict(_TINY, pad_type=""), cfg=_cfg(source=_NO_WEIGHTS.format(name="nest_tiny")),
        reported=Reported(params_m=17.058, gmacs=5.81),
        description="NesT-T, timm's symmetric-pad max pool (for training from scratch)"),
    "nest_small": dict(
        arch=dict(_SMALL, pad_type=""), cfg=_cfg(source=_NO_WEIGHTS.format(name="nest_small")),
        reported=Reported(params_m=38.351, gmacs=10.32),
        description="NesT-S, timm's symmetric-pad max pool (for training from scratch)"),
    "nest_base": dict(
        arch=dict(_BASE, pad_type=""), cfg=_cfg(source=_NO_WEIGHTS.format(name="nest_base")),
        reported=Reported(params_m=67.723, gmacs=17.93),
        description="NesT-B, timm's symmetric-pad max pool (for training from scratch)"),
    "nest_tiny_jx": dict(
        arch=dict(_TINY, pad_type="same"),
        cfg=_cfg(hf_hub_id="timm/nest_tiny_jx.goog_in1k", source=_JAX_SOURCE),
        aliases=("jx_nest_tiny", "nest_tiny_s196_224"),
        reported=Reported(params_m=17.058, gmacs=5.81, top1=81.428, top5=95.630),
        description="NesT-T with TF-'SAME' max pool, the official JAX ImageNet-1k weights"),
    "nest_small_jx": dict(
        arch=dict(_SMALL, pad_type="same"),
        cfg=_cfg(hf_hub_id="timm/nest_small_jx.goog_in1k", source=_JAX_SOURCE),
        aliases=("jx_nest_small", "nest_small_s196_224"),
        reported=Reported(params_m=38.351, gmacs=10.32, top1=83.132, top5=96.330),
        description="NesT-S with TF-'SAME' max pool, the official JAX ImageNet-1k weights"),
    "nest_base_jx": dict(
        arch=dict(_BASE, pad_type="same"),
        cfg=_cfg(hf_hub_id="timm/nest_base_jx.goog_in1k", source=_JAX_SOURCE),
        aliases=("jx_nest_base", "nest_base_s196_224"),
        reported=Reported(params_m=67.723, gmacs=17.93, top1=83.552, top5=96.364),
        description="NesT-B with TF-'SAME' max pool, the official JAX ImageNet-1k weights"),
}

PAD_TYPES = ("", "same")


def max_pool_padded(x: torch.Tensor, pad_type: str) -> torch.Tensor:
    """Max pool 3x3 stride 2 of an NCHW map, padded as timm pads it: 'same' (TF 'SAME', even H and W) by one
    bottom row and right column, '' (symmetric) by one row and column on every side, both with -inf.

    Each padded cell falls only in windows that also hold the real cell next to it, so replicating that cell gives
    the same maximum without a -inf constant (LiteRT's PADV2 with -inf leaves XNNPACK, int8 quantizers mishandle
    it), using slice + cat, which every backend delegates.
    """
    height, width = x.shape[-2:]
    if pad_type != "same":
        x = torch.cat([x[:, :, :1, :], x], dim=2)
        x = torch.cat([x[:, :, :, :1], x], dim=3)
    x = torch.cat([x, x[:, :, -1:, :]], dim=2)
    x = torch.cat([x, x[:, :, :, -1:]], dim=3)
    return F.max_pool2d(x, kernel_size=3, stride=2)


class PatchEmbed(nn.Module):
    """Non-overlapping patch conv of an NCHW image to a channels-last (B, H, W, C) map (timm's
    `PatchEmbed(flatten=False)` keeps NCHW; the levels work channels-last)."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj.channels_last(x, input_layout="NCHW")


class ConvPool(nn.Module):
    """Block aggregation between levels: conv 3x3 -> LayerNorm over channels -> max pool 3x3 stride 2, on
    channels-last (B, H, W, C) maps."""

    def __init__(self, in_channels: int, out_channels: int, pad_type: str = "") -> None:
        super().__init__()
        self.pad_type = pad_type
        # timm's 'same' conv of a 3x3 stride-1 kernel is the static symmetric padding 1 too
        self.conv = Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.norm = LayerNorm(out_channels, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.conv.channels_last(x)).permute(0, 3, 1, 2)
        return max_pool_padded(x, self.pad_type).permute(0, 2, 3, 1)


class NestLevel(nn.Module):
    """One level: (pool) -> blocks + per-block position embedding -> transformer layers -> back to a
    channels-last map."""

    def __init__(self, num_blocks: int, block_size: int, num_heads: int, depth: int, embed_dim: int,
                 prev_embed_dim: int | None, mlp_ratio: float, qkv_bias: bool, drop_path_rates: Sequence[float],
                 pad_type: str) -> None:
        super().__init__()
        self.block_size = block_size
        self.grid = (math.isqrt(num_blocks),) * 2
        # one embedding per block (nested-transformer#11), so it cannot be shared by broadcasting over T
        self.pos_embed = nn.Parameter(torch.zeros(1, num_blocks, block_size * block_size, embed_dim))
        self.pool = nn.Identity() if prev_embed_dim is None else ConvPool(prev_embed_dim, embed_dim, pad_type)
        # head_minor: timm orders the attention output channels d*H + h before proj
        self.transformer_encoder = nn.Sequential(*[
            Block(embed_dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, eps=1e-6, drop_path=rate,
                  head_minor=True)
            for rate in drop_path_rates])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = blockify(self.pool(x), self.block_size) + self.pos_embed
        batch, blocks, tokens, channels = x.shape
        # blocks folded into the batch: attention stays inside each block and is a 3-D bmm
        x = self.transformer_encoder(x.reshape(batch * blocks, tokens, channels))
        return deblockify(x.reshape(batch, blocks, tokens, channels), self.grid, self.block_size)


def _per_level(value: int | Sequence[int], num_levels: int, name: str) -> tuple:
    if isinstance(value, (int, float)):
        return (value,) * num_levels
    if len(value) != num_levels:
        raise EdgevitError(f"{name} has {len(value)} entries but num_levels is {num_levels}; "
                           f"give one value per level (or a single value for all).")
    return tuple(value)


class Nest(EdgeModel):
    """Nested Transformer; `state_dict()` equals timm's `Nest` (keys and shapes).

    `pad_type` is timm's: '' pools with symmetric padding 1 (timm's default, the non-`_jx` models); 'same' is
    TF 'SAME' padding, which the official JAX weights (`nest_*_jx`) need.
    """

    family = "nest"

    def __init__(self, img_size: int = 224, in_chans: int = 3, patch_size: int = 4, num_levels: int = 3,
                 embed_dims: int | Sequence[int] = (128, 256, 512), num_heads: int | Sequence[int] = (4, 8, 16),
                 depths: int | Sequence[int] = (2, 2, 20), num_classes: int = 1000, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, drop_rate: float = 0.0, drop_path_rate: float = 0.5,
                 pad_type: str = "") -> None:
        super().__init__(img_size, in_chans, num_classes)
        if pad_type not in PAD_TYPES:
            raise EdgevitError(f"pad_type must be '' (symmetric, timm's default) or 'same' (TF 'SAME', for the "
                               f"JAX weights), not {pad_type!r}")
        embed_dims = _per_level(embed_dims, num_levels, "embed_dims")
        num_heads = _per_level(num_heads, num_levels, "num_heads")
        depths = _per_level(depths, num_levels, "depths")
        # 4**(L-1) blocks at the first level, a quarter as many at each next one
        self.num_blocks = [4 ** (num_levels - 1 - level) for level in range(num_levels)]
        blocks_per_side = 2 ** (num_levels - 1)
        if img_size % patch_size or (img_size // patch_size) % blocks_per_side:
            raise EdgevitError(
                f"img_size {img_size} does not fit NesT with patch_size {patch_size} and {num_levels} levels: "
                f"img_size must be a multiple of patch_size * {blocks_per_side} = {patch_size * blocks_per_side} "
                f"(e.g. {patch_size * blocks_per_side * max(1, round(img_size / (patch_size * blocks_per_side)))}).")
        self.patch_size = patch_size
        self.pad_type = pad_type
        self.block_size = img_size // patch_size // blocks_per_side
        self.seq_length = self.block_size ** 2
        self.num_features = embed_dims[-1]
        self.drop_rate = drop_rate

        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dims[0])
        rates = drop_path_rates(drop_path_rate, sum(depths))  # plain floats: also builds on the meta device
        levels, prev_dim, start = [], None, 0
        for level, (dim, heads, depth) in enumerate(zip(embed_dims, num_heads, depths)):
            levels.append(NestLevel(self.num_blocks[level], self.block_size, heads, depth, dim, prev_dim,
                                    mlp_ratio, qkv_bias, rates[start:start + depth], pad_type))
            prev_dim, start = dim, start + depth
        self.levels = nn.Sequential(*levels)
        self.norm = LayerNorm(embed_dims[-1], eps=1e-6)
        self.head_drop = Dropout(drop_rate)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """timm's NesT init (JAX-like): truncated normal 0.02 for position embeddings, linears and convs."""
        for level in self.levels:
            nn.init.trunc_normal_(level.pos_embed, std=0.02, a=-2, b=2)
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                nn.init.trunc_normal_(module.weight, std=0.02, a=-2, b=2)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) map after the final LayerNorm, as timm's `forward_features`."""
        self.check_input(x)
        x = self.levels(self.patch_embed(x))
        return self.norm(x).permute(0, 3, 1, 2)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean(dim=(2, 3), keepdim=True)  # the form XNNPACK delegates (4-D, dims [2, 3])
        x = self.head_drop(x.reshape(x.shape[0], x.shape[1]))
        return x if pre_logits else self.head(x)


# --- checkpoint layouts --------------------------------------------------------------------------------------

def _is_legacy_timm(state_dict) -> bool:
    return any(k.startswith(("pos_embed_", "ls_transformer_encoder.", "ls_block_aggregation.")) for k in state_dict)


def _legacy_timm_convert(state_dict: StateDict, model: nn.Module) -> StateDict:
    """timm before 2021-07-05 (81cd6863, the first jx_nest_* release files): per-level lists at the top level.

    `pos_embed_{l}` -> `levels.{l}.pos_embed`; `ls_transformer_encoder.{l}.` -> `levels.{l}.transformer_encoder.`;
    `ls_block_aggregation.{l}.` (the pool *after* level l) -> `levels.{l+1}.pool.`. Tensors are unchanged.
    """
    converted = {}
    for key, value in state_dict.items():
        if key.startswith("pos_embed_"):
            key = f"levels.{key[len('pos_embed_'):]}.pos_embed"
        elif key.startswith("ls_transformer_encoder."):
            level, rest = key[len("ls_transformer_encoder."):].split(".", 1)
            key = f"levels.{level}.transformer_encoder.{rest}"
        elif key.startswith("ls_block_aggregation."):
            level, rest = key[len("ls_block_aggregation."):].split(".", 1)
            key = f"levels.{int(level) + 1}.pool.{rest}"
        converted[key] = value
    return converted


LAYOUTS = (
    KeyLayout("timm-legacy", detect=_is_legacy_timm, convert=_legacy_timm_convert,
              description="timm before July 2021: pos_embed_{l}, ls_transformer_encoder, ls_block_aggregation"),
    # edgevit keeps timm's keys, so a timm checkpoint loads without renaming
    KeyLayout("timm", detect=lambda sd: any(k.startswith("levels.") for k in sd), convert=identity_convert,
              description="timm >= 0.4.12 (levels.{l}.pos_embed / transformer_encoder / pool); edgevit's own keys"),
    KeyLayout("edgevit", detect=lambda sd: True, convert=identity_convert),
)


def resize_pos_embed(state_dict: StateDict, model: Nest) -> tuple[StateDict, list[str]]:
    """Resize each level's (1, T, N, C) position embedding for another img_size.

    The block count T is fixed by the number of levels; only the block side sqrt(N) changes. Every block has
    its own embedding, so each block's sqrt(N) x sqrt(N) grid is resized on its own (bicubic). timm's unused
    `resize_pos_embed` resizes the deblockified whole-image grid instead; this differs at block borders.
    """
    expected = model.state_dict()
    messages = []
    for key in [k for k in state_dict if k.endswith(".pos_embed") and k in expected]:
        source, target = state_dict[key], expected[key]
        if source.shape == target.shape or source.ndim != 4 or source.shape[:2] != target.shape[:2] \
                or source.shape[3] != target.shape[3]:
            continue
        old_side, new_side = math.isqrt(source.shape[2]), math.isqrt(target.shape[2])
        if old_side * old_side != source.shape[2]:
            continue
        blocks = [resample_abs_pos_embed(source[:, t], (new_side, new_side), num_prefix_tokens=0,
                                         old_grid=(old_side, old_side)) for t in range(source.shape[1])]
        state_dict[key] = torch.stack(blocks, dim=1)
        count = source.shape[1]
        blocks_text = f"{count} block{'s' * (count > 1)}"
        messages.append(f"resized {key} from {count * old_side ** 2} to {count * new_side ** 2} tokens "
                        f"({blocks_text}, each {old_side}x{old_side} -> {new_side}x{new_side}, bicubic)")
    return state_dict, messages


register_family(Family(name="nest", model_cls=Nest, layouts=LAYOUTS, head_keys=("head.",),
                       pos_embed_resizer=resize_pos_embed), VARIANTS)
