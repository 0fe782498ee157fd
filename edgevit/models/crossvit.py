"""CrossViT (Chen, Fan & Panda, ICCV 2021): two ViT branches on 12- and 16-pixel patches, fused by cross-attention.

Parameter names follow timm's `CrossVit`, so timm checkpoints load as they are; the official IBM/CrossViT
checkpoints differ only in `pos_embed.0` / `cls_token.0` (an `nn.ParameterList`), renamed on load.

Export-friendly changes from the reference, each exact:
- the large branch's bicubic input resize (240 -> 224, 408 -> 384) is a `SeparableResize`, two matmuls with
  constant bicubic matrices, instead of `F.interpolate(mode="bicubic")`, which TFLite and several NPUs lack;
- cross-attention runs as 3-D `bmm`s (`multi_head_attention`), and token reads are slices, not `select`s;
- the final LayerNorm is applied to the cls tokens only: it acts per token and the head reads nothing else.

timm names the variants by their real input size (`*_240`, `*_408`); the official `*_224` / `*_384` names are
aliases.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import EdgevitError
from .base import EdgeModel
from .checkpoint import KeyLayout, StateDict, identity_convert
from .layers import (Block, Conv2d, Dropout, DropPath, LayerNorm, SeparableResize, drop_path_rates, first_token,
                     init_vit_weights, multi_head_attention, prepend_token, resample_abs_pos_embed)
from .registry import Family, PretrainedCfg, Reported, register_family

# Both branches see the same image; the large-patch branch sees it resized to this size (timm and official).
_BRANCH_SIZES = {240: 224, 408: 384}
_SOURCE = "IBM/CrossViT official ImageNet-1k weights, converted and hosted by timm on the Hugging Face hub"


def _arch(embed_dim: tuple[int, int], num_heads: tuple[int, int], large_depth: int, mlp_ratio: float,
          multi_conv: bool = False, img_size: int = 240) -> dict:
    """timm's constructor arguments of a published variant: 3 multi-scale blocks of 1 small + M large blocks."""
    return dict(img_size=img_size, img_scale=(1.0, _BRANCH_SIZES[img_size] / img_size), patch_size=(12, 16),
                embed_dim=embed_dim, depth=((1, large_depth, 0),) * 3, num_heads=num_heads,
                mlp_ratio=(mlp_ratio, mlp_ratio, 1.0), multi_conv=multi_conv)


def _cfg(name: str, img_size: int = 240) -> PretrainedCfg:
    # timm evaluates at crop 0.875 at 240 and at full crop at 408 (the official script uses 256/224 for both)
    return PretrainedCfg(input_size=(3, img_size, img_size), crop_pct=0.875 if img_size == 240 else 1.0,
                         interpolation="bicubic", hf_hub_id=f"timm/{name}.in1k", source=_SOURCE)


VARIANTS = {
    "crossvit_tiny_240": dict(
        arch=_arch((96, 192), (3, 3), 4, 4.0), cfg=_cfg("crossvit_tiny_240"), aliases=("crossvit_tiny_224",),
        reported=Reported(params_m=7.015, gmacs=1.563, top1=73.352, top5=91.906),
        description="CrossViT-Ti: dims 96/192, 3 heads, 240 + 224 inputs"),
    "crossvit_small_240": dict(
        arch=_arch((192, 384), (6, 6), 4, 4.0), cfg=_cfg("crossvit_small_240"), aliases=("crossvit_small_224",),
        reported=Reported(params_m=26.856, gmacs=5.616, top1=81.036, top5=95.466),
        description="CrossViT-S: dims 192/384, 6 heads, 240 + 224 inputs"),
    "crossvit_base_240": dict(
        arch=_arch((384, 768), (12, 12), 4, 4.0), cfg=_cfg("crossvit_base_240"), aliases=("crossvit_base_224",),
        reported=Reported(params_m=105.025, gmacs=21.191, top1=82.212, top5=95.826),
        description="CrossViT-B: dims 384/768, 12 heads, 240 + 224 inputs"),
    "crossvit_9_240": dict(
        arch=_arch((128, 256), (4, 4), 3, 3.0), cfg=_cfg("crossvit_9_240"), aliases=("crossvit_9_224",),
        reported=Reported(params_m=8.553, gmacs=1.841, top1=73.994, top5=91.976),
        description="CrossViT-9: dims 128/256, 4 heads, MLP ratio 3, 240 + 224 inputs"),
    "crossvit_15_240": dict(
        arch=_arch((192, 384), (6, 6), 5, 3.0), cfg=_cfg("crossvit_15_240"), aliases=("crossvit_15_224",),
        reported=Reported(params_m=27.528, gmacs=5.791, top1=81.522, top5=95.694),
        description="CrossViT-15: dims 192/384, 6 heads, MLP ratio 3, 240 + 224 inputs"),
    "crossvit_18_240": dict(
        arch=_arch((224, 448), (7, 7), 6, 3.0), cfg=_cfg("crossvit_18_240"), aliases=("crossvit_18_224",),
        reported=Reported(params_m=43.271, gmacs=9.031, top1=82.390, top5=96.064),
        description="CrossViT-18: dims 224/448, 7 heads, MLP ratio 3, 240 + 224 inputs"),
    "crossvit_9_dagger_240": dict(
        arch=_arch((128, 256), (4, 4), 3, 3.0, multi_conv=True), cfg=_cfg("crossvit_9_dagger_240"),
        aliases=("crossvit_9_dagger_224",),
        reported=Reported(params_m=8.777, gmacs=1.979, top1=76.990, top5=93.602),
        description="CrossViT-9†: CrossViT-9 with a 3-conv patch stem"),
    "crossvit_15_dagger_240": dict(
        arch=_arch((192, 384), (6, 6), 5, 3.0, multi_conv=True), cfg=_cfg("crossvit_15_dagger_240"),
        aliases=("crossvit_15_dagger_224",),
        reported=Reported(params_m=28.209, gmacs=6.112, top1=82.302, top5=95.960),
        description="CrossViT-15†: CrossViT-15 with a 3-conv patch stem"),
    "crossvit_18_dagger_240": dict(
        arch=_arch((224, 448), (7, 7), 6, 3.0, multi_conv=True), cfg=_cfg("crossvit_18_dagger_240"),
        aliases=("crossvit_18_dagger_224",),
        reported=Reported(params_m=44.267, gmacs=9.473, top1=82.494, top5=96.070),
        description="CrossViT-18†: CrossViT-18 with a 3-conv patch stem"),
    "crossvit_15_dagger_408": dict(
        arch=_arch((192, 384), (6, 6), 5, 3.0, multi_conv=True, img_size=408),
        cfg=_cfg("crossvit_15_dagger_408", img_size=408), aliases=("crossvit_15_dagger_384",),
        reported=Reported(params_m=28.500, gmacs=21.399, top1=83.842, top5=96.786),
        description="CrossViT-15† fine-tuned at 408 + 384 inputs"),
    "crossvit_18_dagger_408": dict(
        arch=_arch((224, 448), (7, 7), 6, 3.0, multi_conv=True, img_size=408),
        cfg=_cfg("crossvit_18_dagger_408", img_size=408), aliases=("crossvit_18_dagger_384",),
        reported=Reported(params_m=44.607, gmacs=32.409, top1=84.198, top5=96.834),
        description="CrossViT-18† fine-tuned at 408 + 384 inputs"),
}


class PatchEmbed(nn.Module):
    """A linear patch embedding (conv p/p), or the † variants' 3-conv stem, flattened to (B, N, D)."""

    def __init__(self, img_size: int, patch_size: int, in_chans: int, embed_dim: int, multi_conv: bool) -> None:
        super().__init__()
        if not multi_conv:
            self.proj: nn.Module = Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        elif patch_size == 12:
            self.proj = nn.Sequential(
                Conv2d(in_chans, embed_dim // 4, kernel_size=7, stride=4, padding=3), nn.ReLU(),
                Conv2d(embed_dim // 4, embed_dim // 2, kernel_size=3, stride=3, padding=0), nn.ReLU(),
                Conv2d(embed_dim // 2, embed_dim, kernel_size=3, stride=1, padding=1))
        elif patch_size == 16:
            self.proj = nn.Sequential(
                Conv2d(in_chans, embed_dim // 4, kernel_size=7, stride=4, padding=3), nn.ReLU(),
                Conv2d(embed_dim // 4, embed_dim // 2, kernel_size=3, stride=2, padding=1), nn.ReLU(),
                Conv2d(embed_dim // 2, embed_dim, kernel_size=3, stride=2, padding=1))
        else:
            raise EdgevitError(f"the CrossViT multi-conv (†) stem exists for patch sizes 12 and 16, not "
                               f"{patch_size}; use multi_conv=False or patch_size=(12, 16).")
        # The token grid the stem really produces. timm sizes pos_embed as img_size // patch, which the † stem
        # does not always give (268 px: 17 tokens a side, not 16); the two agree at every multiple of the patch.
        side = img_size
        for conv in self.proj.modules():
            if isinstance(conv, nn.Conv2d):
                side = (side + 2 * conv.padding[0] - conv.kernel_size[0]) // conv.stride[0] + 1
        self.grid_size = (side, side)
        self.num_patches = side * side

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.proj, Conv2d):  # channels-last tokens straight away: the GEMM form needs no transpose
            return self.proj.channels_last(x, input_layout="NCHW").flatten(1, 2)
        return self.proj(x).flatten(2).transpose(1, 2)


class CrossAttention(nn.Module):
    """The cls token attends to every token of the other branch (its own projected cls included)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.wq = nn.Linear(dim, dim, bias=qkv_bias)
        self.wk = nn.Linear(dim, dim, bias=qkv_bias)
        self.wv = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = self.wq(x[:, :1])
        out = multi_head_attention(q, self.wk(x), self.wv(x), self.num_heads, self.scale)
        return self.proj(out)


class CrossAttentionBlock(nn.Module):
    """Pre-norm cross-attention with the residual on the cls token only and no MLP; returns (B, 1, D)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, eps: float = 1e-6,
                 drop_path: float = 0.0) -> None:
        super().__init__()
        self.norm1 = LayerNorm(dim, eps=eps)
        self.attn = CrossAttention(dim, num_heads, qkv_bias=qkv_bias)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :1] + self.drop_path(self.attn(self.norm1(x)))


def _projection(in_dim: int, out_dim: int, eps: float) -> nn.Sequential:
    """LN -> GELU -> Linear between the branches' widths (indices 0 and 2 in the checkpoints)."""
    return nn.Sequential(LayerNorm(in_dim, eps=eps), nn.GELU(), nn.Linear(in_dim, out_dim))


class MultiScaleBlock(nn.Module):
    """Each branch's own ViT blocks, then each branch's cls token exchanges information with the other branch."""

    def __init__(self, embed_dim: tuple[int, ...], depth: tuple[int, ...], num_heads: tuple[int, ...],
                 mlp_ratio: tuple[float, ...], qkv_bias: bool, drop_path: list[float], eps: float = 1e-6) -> None:
        super().__init__()
        branches = len(embed_dim)
        self.num_branches = branches
        self.blocks = nn.ModuleList(
            nn.Sequential(*(Block(embed_dim[d], num_heads[d], mlp_ratio[d], qkv_bias=qkv_bias, eps=eps,
                                  drop_path=drop_path[i]) for i in range(depth[d])))
            for d in range(branches))
        other = [(d + 1) % branches for d in range(branches)]
        self.projs = nn.ModuleList(_projection(embed_dim[d], embed_dim[other[d]], eps) for d in range(branches))
        # fusion i runs in the other branch's width with that branch's heads
        self.fusion = nn.ModuleList(
            CrossAttentionBlock(embed_dim[other[d]], num_heads[other[d]], qkv_bias=qkv_bias, eps=eps,
                                drop_path=drop_path[-1]) for d in range(branches))
        self.revert_projs = nn.ModuleList(_projection(embed_dim[other[d]], embed_dim[d], eps)
                                          for d in range(branches))

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        xs = [block(x) for block, x in zip(self.blocks, xs)]
        outs = []
        for i, (proj, fusion, revert) in enumerate(zip(self.projs, self.fusion, self.revert_projs)):
            # every fusion reads the branch outputs above, never another fusion's result
            other_patches = xs[(i + 1) % self.num_branches][:, 1:]
            cls = revert(fusion(prepend_token(proj(xs[i][:, :1]), other_patches)))
            outs.append(prepend_token(cls, xs[i][:, 1:]))
        return outs


class CrossVit(EdgeModel):
    """timm's `CrossVit` for the published configurations (fusion depth 0, class-token readout).

    `forward_features` returns the normed cls tokens of all branches concatenated, small-patch branch first
    (timm's `forward_head(pre_logits=True)`); the logits are the mean of the branches' heads.
    """

    family = "crossvit"

    def __init__(self, img_size: int = 240, img_scale: tuple[float, ...] = (1.0, 224 / 240),
                 patch_size: tuple[int, ...] = (12, 16), in_chans: int = 3, num_classes: int = 1000,
                 embed_dim: tuple[int, ...] = (96, 192), depth: tuple[tuple[int, ...], ...] = ((1, 4, 0),) * 3,
                 num_heads: tuple[int, ...] = (3, 3), mlp_ratio: tuple[float, ...] = (4.0, 4.0, 1.0),
                 multi_conv: bool = False, qkv_bias: bool = True, drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0) -> None:
        super().__init__(img_size, in_chans, num_classes)
        branches = len(patch_size)
        if not len(img_scale) == len(embed_dim) == len(num_heads) == branches:
            raise EdgevitError(f"img_scale, patch_size, embed_dim and num_heads need one entry per branch; got "
                               f"{len(img_scale)}, {branches}, {len(embed_dim)} and {len(num_heads)}.")
        if any(len(stage) != branches + 1 or stage[-1] != 0 or max(stage[:-1]) < 1 for stage in depth):
            raise EdgevitError(f"each depth entry must be (blocks per branch ..., 0) with at least one block; got "
                               f"{depth}. Only fusion depth 0 (a cross-attention without MLP, as in every published "
                               "CrossViT) is built.")
        self.num_branches = branches
        self.embed_dim = tuple(embed_dim)
        self.num_features = sum(embed_dim)
        # int() truncation as timm: 240 * (224 / 240) -> 224
        self.img_size_scaled = tuple(int(img_size * scale) for scale in img_scale)

        self.patch_embed = nn.ModuleList(
            PatchEmbed(size, patch, in_chans, dim, multi_conv)
            for size, patch, dim in zip(self.img_size_scaled, patch_size, embed_dim))
        for i, (embed, dim) in enumerate(zip(self.patch_embed, embed_dim)):
            # separate attributes, not a ParameterList: timm's key names
            self.register_parameter(f"pos_embed_{i}", nn.Parameter(torch.zeros(1, 1 + embed.num_patches, dim)))
            self.register_parameter(f"cls_token_{i}", nn.Parameter(torch.zeros(1, 1, dim)))
        self.resize = nn.ModuleList(
            SeparableResize((img_size, img_size), (size, size)) if size != img_size else nn.Identity()
            for size in self.img_size_scaled)

        # stochastic depth over the large-branch depth, as timm schedules it
        rates = drop_path_rates(drop_path_rate, sum(sum(stage[-2:]) for stage in depth))
        self.blocks = nn.ModuleList()
        start = 0
        for stage in depth:
            stage_depth = max(stage[:-1])
            self.blocks.append(MultiScaleBlock(self.embed_dim, stage[:-1], num_heads, mlp_ratio, qkv_bias,
                                               rates[start:start + stage_depth]))
            start += stage_depth

        self.norm = nn.ModuleList(LayerNorm(dim, eps=1e-6) for dim in embed_dim)
        self.head_drop = Dropout(drop_rate)
        self.head = nn.ModuleList(nn.Linear(dim, num_classes) if num_classes > 0 else nn.Identity()
                                  for dim in embed_dim)
        init_vit_weights(self, *(getattr(self, f"{kind}_{i}") for i in range(self.num_branches)
                                 for kind in ("pos_embed", "cls_token")))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        xs = []
        for i, (resize, embed) in enumerate(zip(self.resize, self.patch_embed)):
            tokens = prepend_token(getattr(self, f"cls_token_{i}"), embed(resize(x)))
            xs.append(tokens + getattr(self, f"pos_embed_{i}"))
        for block in self.blocks:
            xs = block(xs)
        return torch.cat([norm(first_token(tokens)) for norm, tokens in zip(self.norm, xs)], dim=1)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(x)
        if pre_logits or self.num_classes == 0:
            return x
        logits = None
        start = 0
        for head, dim in zip(self.head, self.embed_dim):
            branch = head(x[:, start:start + dim])
            logits = branch if logits is None else logits + branch
            start += dim
        return logits * (1.0 / self.num_branches)  # a float scalar: an int one exports as a cast outside XNNPACK


# --- checkpoint layouts ------------------------------------------------------------------------------------------

def _is_official(state_dict) -> bool:
    return any(k.startswith(("pos_embed.", "cls_token.")) for k in state_dict)


def _is_timm(state_dict) -> bool:
    return any(k.startswith(("pos_embed_", "cls_token_")) for k in state_dict)


def official_to_timm(state_dict: StateDict, model: nn.Module) -> StateDict:
    """`pos_embed.0` -> `pos_embed_0` (timm's own pretrained filter); every other key is the same."""
    return {(k.replace(".", "_") if "pos_embed" in k or "cls_token" in k else k): v for k, v in state_dict.items()}


LAYOUTS = (
    KeyLayout("official", detect=_is_official, convert=official_to_timm,
              description="IBM/CrossViT release: pos_embed.i / cls_token.i in ParameterLists"),
    KeyLayout("timm", detect=_is_timm, convert=identity_convert,
              description="timm CrossVit: pos_embed_i / cls_token_i attributes"),
    KeyLayout("edgevit", detect=lambda state_dict: True, convert=identity_convert,
              description="edgevit's own keys (the same as timm's)"),
)


def resize_pos_embed(state_dict: StateDict, model: CrossVit) -> tuple[StateDict, list[str]]:
    """Resample each branch's square pos_embed grid (1 cls token first) to the model's grid at its img_size."""
    messages = []
    for i, embed in enumerate(model.patch_embed):
        key = f"pos_embed_{i}"
        source, target = state_dict.get(key), getattr(model, key)
        if (source is None or source.shape == target.shape or source.ndim != 3 or source.shape[0] != 1
                or source.shape[-1] != target.shape[-1]):
            continue
        side = math.isqrt(source.shape[1] - 1)
        if side * side != source.shape[1] - 1:
            continue  # not a square grid: left for the strict loader to report
        state_dict[key] = resample_abs_pos_embed(source, embed.grid_size, num_prefix_tokens=1, old_grid=(side, side))
        messages.append(f"resized {key} from {source.shape[1]} to {target.shape[1]} tokens "
                        f"(grid {side}x{side} -> {embed.grid_size[0]}x{embed.grid_size[1]})")
    return state_dict, messages


register_family(Family(name="crossvit", model_cls=CrossVit, layouts=LAYOUTS, head_keys=("head.",),
                       pos_embed_resizer=resize_pos_embed), VARIANTS)
