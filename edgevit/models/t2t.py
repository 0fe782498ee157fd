"""T2T-ViT (Tokens-to-Token ViT, Yuan et al. 2021), export-clean, loading the official release files as they are.

There is no timm implementation, so edgevit's key layout is the official repository's (yitu-opensource/T2T-ViT):
its `state_dict_ema` loads without renaming. What differs from the official code is only how things are computed:
- soft splits (`nn.Unfold`) are one-hot convolutions (`OneHotUnfold`), since im2col lowers to gathers;
- the Performer's einsums are 3-D `bmm`s, and its random features and normaliser stay in float32 when the model
  runs in fp16 (the official `exp(w·x - |x|²/2)` and its 1e-8 epsilon overflow and underflow in fp16);
- attention is 3-D `bmm` (`layers.multi_head_attention`).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import EdgevitError
from .base import EdgeModel
from .checkpoint import KeyLayout, StateDict, identity_convert
from .layers import (Block, Dropout, LayerNorm, Mlp, OneHotUnfold, drop_path_rates, first_token, init_vit_weights,
                     multi_head_attention, prepend_token, resample_abs_pos_embed, to_2tuple)
from .registry import Family, PretrainedCfg, Reported, register_family

_RELEASE = "https://github.com/yitu-opensource/T2T-ViT/releases/download/main/"
_SOURCE = "yitu-opensource/T2T-ViT GitHub release (official, EMA weights)"
_NO_WEIGHTS = "none: the official repository defines this architecture but published no weights"


def _cfg(file: str | None = None, img_size: int = 224, source: str = _SOURCE) -> PretrainedCfg:
    # Official `_cfg`: ImageNet default mean/std, crop 0.9, bicubic; the 384 model uses it at 384.
    return PretrainedCfg(input_size=(3, img_size, img_size), crop_pct=0.9, interpolation="bicubic",
                         url=_RELEASE + file if file else None, source=source if file else _NO_WEIGHTS)


def _arch(tokens_type: str, embed_dim: int, depth: int, num_heads: int, mlp_ratio: float, img_size: int = 224) -> dict:
    return dict(img_size=img_size, tokens_type=tokens_type, embed_dim=embed_dim, depth=depth, num_heads=num_heads,
                mlp_ratio=mlp_ratio)


# Params are the official checkpoints' totals, which include the frozen `pos_embed` and Performer `w`;
# GMACs as measured on the official code (spec section 2.1); top-1 from the official README.
VARIANTS = {
    "t2t_vit_7": dict(
        arch=_arch("performer", 256, 7, 4, 2.0), cfg=_cfg("71.7_T2T_ViT_7.pth.tar"), aliases=("T2t_vit_7",),
        reported=Reported(params_m=4.310, gmacs=1.147, top1=71.7),
        description="T2T-ViT-7: Performer T2T module, D=256, 7 blocks (lite)"),
    "t2t_vit_10": dict(
        arch=_arch("performer", 256, 10, 4, 2.0), cfg=_cfg("75.2_T2T_ViT_10.pth.tar"), aliases=("T2t_vit_10",),
        reported=Reported(params_m=5.889, gmacs=1.516, top1=75.2),
        description="T2T-ViT-10: Performer T2T module, D=256, 10 blocks (lite)"),
    "t2t_vit_12": dict(
        arch=_arch("performer", 256, 12, 4, 2.0), cfg=_cfg("76.5_T2T_ViT_12.pth.tar"), aliases=("T2t_vit_12",),
        reported=Reported(params_m=6.942, gmacs=1.763, top1=76.5),
        description="T2T-ViT-12: Performer T2T module, D=256, 12 blocks (lite)"),
    "t2t_vit_14": dict(
        arch=_arch("performer", 384, 14, 6, 3.0), cfg=_cfg("81.5_T2T_ViT_14.pth.tar"), aliases=("T2t_vit_14",),
        reported=Reported(params_m=21.546, gmacs=4.783, top1=81.5, top5=95.666),
        description="T2T-ViT-14: Performer T2T module, D=384, 14 blocks"),
    "t2t_vit_14_384": dict(
        arch=_arch("performer", 384, 14, 6, 3.0, img_size=384), cfg=_cfg("83.3_T2T_ViT_14.pth.tar", img_size=384),
        reported=Reported(params_m=21.691, gmacs=16.37, top1=83.3),
        description="T2T-ViT-14 trained at 384x384 (576 tokens)"),
    "t2t_vit_19": dict(
        arch=_arch("performer", 448, 19, 7, 3.0), cfg=_cfg("81.9_T2T_ViT_19.pth.tar"), aliases=("T2t_vit_19",),
        reported=Reported(params_m=39.177, gmacs=8.480, top1=81.9),
        description="T2T-ViT-19: Performer T2T module, D=448, 19 blocks"),
    "t2t_vit_24": dict(
        arch=_arch("performer", 512, 24, 8, 3.0), cfg=_cfg("82.3_T2T_ViT_24.pth.tar"), aliases=("T2t_vit_24",),
        reported=Reported(params_m=64.106, gmacs=13.662, top1=82.3),
        description="T2T-ViT-24: Performer T2T module, D=512, 24 blocks"),
    "t2t_vit_t_14": dict(
        arch=_arch("transformer", 384, 14, 6, 3.0), cfg=_cfg("81.7_T2T_ViTt_14.pth.tar"), aliases=("T2t_vit_t_14",),
        reported=Reported(params_m=21.541, gmacs=6.089, top1=81.7),
        description="T2T-ViT_t-14: Transformer T2T module, D=384, 14 blocks"),
    "t2t_vit_t_19": dict(
        arch=_arch("transformer", 448, 19, 7, 3.0), cfg=_cfg("82.4_T2T_ViTt_19.pth.tar"), aliases=("T2t_vit_t_19",),
        reported=Reported(params_m=39.173, gmacs=9.785, top1=82.4),
        description="T2T-ViT_t-19: Transformer T2T module, D=448, 19 blocks"),
    "t2t_vit_t_24": dict(
        arch=_arch("transformer", 512, 24, 8, 3.0), cfg=_cfg("82.6_T2T_ViTt_24.pth.tar"), aliases=("T2t_vit_t_24",),
        reported=Reported(params_m=64.101, gmacs=14.967, top1=82.6),
        description="T2T-ViT_t-24: Transformer T2T module, D=512, 24 blocks"),
    "t2t_vit_14_resnext": dict(
        arch=_arch("performer", 384, 14, 32, 3.0), cfg=_cfg(), aliases=("T2t_vit_14_resnext",),
        reported=Reported(params_m=21.546, gmacs=4.783),
        description="T2T-ViT-14 with 32 narrow heads (ResNeXt-style), no published weights"),
    "t2t_vit_14_wide": dict(
        arch=_arch("performer", 768, 4, 12, 3.0), cfg=_cfg(), aliases=("T2t_vit_14_wide",),
        reported=Reported(params_m=25.156, gmacs=5.229),
        description="T2T-ViT-14-wide: D=768, 4 blocks (wide-ResNet-style), no published weights"),
}

# modules whose own code (not their child Linears) must run in float32 whatever the model's precision: the
# Performer's random features, exp and normaliser overflow fp16 (exp(cap) is inf there)
FLOAT32_MODULES = ("TokenPerformer",)
PERFORMER_EPSILON = 1e-8  # official value; enters the shifted form below as log(m * eps) - shifts, exactly
EPSILON_EXPONENT_CAP = 80.0  # exp(80) ~ 5.5e34, below float32's max (exp(88.7))


def sinusoid_table(num_tokens: int, dim: int) -> torch.Tensor:
    """The official fixed position table (1, num_tokens, dim): sin on even channels, cos on odd ones.

    Computed in float64 like the official numpy code, then rounded to float32.
    """
    position = torch.arange(num_tokens, dtype=torch.float64).unsqueeze(1)
    exponent = (2 * (torch.arange(dim) // 2)).to(torch.float64) / dim
    angle = position / torch.pow(torch.tensor(10000.0, dtype=torch.float64), exponent)
    table = torch.empty_like(angle)
    table[:, 0::2] = torch.sin(angle[:, 0::2])
    table[:, 1::2] = torch.cos(angle[:, 1::2])
    return table.float().unsqueeze(0)


def _as_float32(x: torch.Tensor) -> torch.Tensor:
    # a cast only where one is needed: `.float()` on a float32 tensor still exports as a copy op
    return x if x.dtype == torch.float32 else x.float()


def sum_last_dim(x: torch.Tensor) -> torch.Tensor:
    """x.sum(-1, keepdim=True) for (B, T, W), as the one reduction XNNPACK delegates: a 4-D mean over dims 2, 3."""
    batch, tokens, width = x.shape
    return x.reshape(1, batch * tokens, width, 1).mean(dim=(2, 3), keepdim=True).reshape(batch, tokens, 1) * float(width)


def _row_max(x: torch.Tensor) -> torch.Tensor:
    """x.amax(-1, keepdim=True) for (B, T, W), as a max pool every backend takes (XNNPACK's amax needs 4-D).

    Tokens are the pool's channels: XNNPACK pools channels-last, so each window step is one vector max over
    all tokens. With the tokens as rows of one channel it took a scalar max per element (T2T-ViT-7's .pte at
    224 px: 0.11 and 0.14 ms for the first Performer's two maxima; the whole model 0.35 ms faster this way).
    """
    batch, tokens, width = x.shape
    return F.max_pool2d(x.reshape(batch, tokens, 1, width), (1, width), (1, width)).reshape(batch, tokens, 1)


def _all_max(x: torch.Tensor) -> torch.Tensor:
    """The max over all of (T, W) per batch element, (B, T, W) -> (B, 1, 1): the row maxima, then their max
    (two pools with a vector to work on, see `_row_max`, instead of one over a single channel)."""
    batch, tokens, _ = x.shape
    rows = _row_max(x).reshape(batch, 1, 1, tokens)
    return F.max_pool2d(rows, (1, tokens), (1, tokens)).reshape(batch, 1, 1)


class TokenPerformer(nn.Module):
    """The official `Token_performer`: single-head linear attention with positive random features.

    Maps `dim`-wide soft-split tokens to `in_dim` (official names: `dim` is the input width). The skip connection
    goes through v because the width changes, and q, k are not scaled.
    """

    def __init__(self, dim: int, in_dim: int, kernel_ratio: float = 0.5, drop: float = 0.1) -> None:
        super().__init__()
        self.emb = in_dim
        self.kqv = nn.Linear(dim, 3 * in_dim)
        self.dp = Dropout(drop)
        self.proj = nn.Linear(in_dim, in_dim)
        self.norm1 = LayerNorm(dim, eps=1e-5)
        self.norm2 = LayerNorm(in_dim, eps=1e-5)
        # indices 0 and 2 carry the weights: `mlp.0.*`, `mlp.2.*` as in the official checkpoints
        self.mlp = nn.Sequential(nn.Linear(in_dim, in_dim), nn.GELU(), nn.Linear(in_dim, in_dim), Dropout(drop))
        self.m = int(in_dim * kernel_ratio)
        # Frozen random features, stored in the checkpoint; a load that misses them would silently break the model.
        w = nn.init.orthogonal_(torch.randn(self.m, in_dim)) * math.sqrt(self.m)
        self.w = nn.Parameter(w, requires_grad=False)

    def prm_logits(self, x: torch.Tensor) -> torch.Tensor:
        """w·x - |x|²/2, the exponent of the official `prm_exp`: (B, T, emb) float32 -> (B, T, m) float32."""
        batch, tokens, width = x.shape
        half_sq_norm = sum_last_dim(x * x) * 0.5  # float scalars throughout: an int one exports as a cast
        # a 2-D linear with the constant w: a matmul of the (strided) k/q slice would export as expand + bmm, and
        # an mm with a transposed parameter is not delegated by XNNPACK
        wtx = F.linear(x.reshape(batch * tokens, width), _as_float32(self.w)).reshape(batch, tokens, self.m)
        return wtx - half_sq_norm

    def single_attn(self, x: torch.Tensor) -> torch.Tensor:
        kqv = self.kqv(x)
        emb = self.emb
        # split order is k, q, v (official); last-dim slices, which every backend delegates
        k, q, v = kqv[..., :emb], kqv[..., emb:2 * emb], kqv[..., 2 * emb:]
        device_type = x.device.type
        # mixed-precision training: autocast would make these bf16. Meta tensors (MAC counting) have no autocast.
        if torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type):
            with torch.autocast(device_type, enabled=False):
                y = self._random_feature_attention(k, q, v)
        else:
            y = self._random_feature_attention(k, q, v)
        return v + self.dp(self.proj(y.to(v.dtype) if v.dtype != y.dtype else y))

    def _random_feature_attention(self, k: torch.Tensor, q: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """The normalised linear attention of q over (k, v), in float32: (B, T, emb) each -> (B, T, emb)."""
        # float32 from here to the normalised output, whatever the model's dtype (T2T-ViT issues #65, #69)
        v32 = _as_float32(v)
        k_logits, q_logits = self.prm_logits(_as_float32(k)), self.prm_logits(_as_float32(q))  # (B, T, m)
        # The official exp(w·x - |x|²/2) reaches -87 on trained models, where float32 turns subnormal and runtimes
        # disagree (ONNX Runtime and XNNPACK flush to zero, PyTorch does not). Shifting q's features by their max
        # per token and k's by one max over all keys keeps every exp in (0, 1]; the shifts cancel in the ratio and
        # survive only in the epsilon term, exp(log(m * eps) - q_shift - k_shift), so the result is the official
        # one in exact arithmetic. Where the official epsilon term is effectively infinite (y -> 0), the exponent is
        # capped at EPSILON_EXPONENT_CAP: exp(cap) still dwarfs any normaliser (<= tokens), so y is 0 to float
        # precision as before, but training gets zero gradients there instead of NaN (inf * 0 in exp's backward).
        q_shift, k_shift = _row_max(q_logits), _all_max(k_logits)  # (B, T, 1), (B, 1, 1)
        qp, kp = torch.exp(q_logits - q_shift), torch.exp(k_logits - k_shift)
        normaliser = torch.bmm(qp, sum_last_dim(kp.transpose(1, 2)))  # (B, T, 1) = qp · Σ_t kp
        # kpᵀv first, so both products take activations in their natural layout (LiteRT would turn
        # qp · (vᵀkp)ᵀ into a FULLY_CONNECTED with activation weights, which XNNPACK rejects)
        ktv = torch.bmm(kp.transpose(1, 2), v32)  # (B, m, emb)
        epsilon = torch.exp(torch.clamp(math.log(self.m * PERFORMER_EPSILON) - q_shift - k_shift,
                                        max=EPSILON_EXPONENT_CAP))
        return torch.bmm(qp, ktv) / (normaliser + epsilon)  # (B, T, emb)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.single_attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TokenAttention(nn.Module):
    """The official T2T `Attention` with one head: `dim`-wide tokens in, `in_dim`-wide out, skip through v."""

    def __init__(self, dim: int, in_dim: int) -> None:
        super().__init__()
        self.in_dim = in_dim
        # Single head, so head_dim is the input width (147 or 576), not in_dim (official, and what the weights need).
        self.scale = dim ** -0.5
        self.qkv = nn.Linear(dim, 3 * in_dim, bias=False)
        self.proj = nn.Linear(in_dim, in_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qkv = self.qkv(x)
        emb = self.in_dim
        q, k, v = qkv[..., :emb], qkv[..., emb:2 * emb], qkv[..., 2 * emb:]
        return v + self.proj(multi_head_attention(q, k, v, num_heads=1, scale=self.scale))


class TokenTransformer(nn.Module):
    """The official `Token_transformer` (single head, MLP ratio 1), mapping `dim`-wide tokens to `in_dim`."""

    def __init__(self, dim: int, in_dim: int) -> None:
        super().__init__()
        self.norm1 = LayerNorm(dim, eps=1e-5)
        self.attn = TokenAttention(dim, in_dim)
        self.norm2 = LayerNorm(in_dim, eps=1e-5)
        self.mlp = Mlp(in_dim, in_dim, in_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def _split_size(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


# The official soft splits (kernel, stride, padding): 7/4/2, 3/2/1, 3/2/1, a 16x token reduction.
SOFT_SPLITS = ((7, 4, 2), (3, 2, 1), (3, 2, 1))


class T2TModule(nn.Module):
    """Tokens-to-Token: three soft splits (official: 7/4/2, 3/2/1, 3/2/1), a token transformer after the first two.

    `soft_splits` gives each split's (kernel, stride, padding); small inputs use a gentler reduction
    (see `registry.small_input_arch`). The widths of `attention1`, `attention2` and `project` follow the kernels.
    """

    def __init__(self, img_size: int, tokens_type: str, in_chans: int, embed_dim: int, token_dim: int,
                 soft_splits: tuple = SOFT_SPLITS) -> None:
        super().__init__()
        soft_splits = tuple(tuple(int(v) for v in split) for split in soft_splits)
        if len(soft_splits) != 3 or any(len(split) != 3 for split in soft_splits):
            raise EdgevitError(f"soft_splits needs three (kernel, stride, padding) triples, got {soft_splits}")
        (k0, s0, p0), (k1, s1, p1), (k2, s2, p2) = soft_splits
        self.soft_split0 = OneHotUnfold(in_chans, kernel_size=k0, stride=s0, padding=p0)
        self.soft_split1 = OneHotUnfold(token_dim, kernel_size=k1, stride=s1, padding=p1)
        self.soft_split2 = OneHotUnfold(token_dim, kernel_size=k2, stride=s2, padding=p2)
        if tokens_type == "performer":
            self.attention1 = TokenPerformer(in_chans * k0 * k0, token_dim, kernel_ratio=0.5)
            self.attention2 = TokenPerformer(token_dim * k1 * k1, token_dim, kernel_ratio=0.5)
        elif tokens_type == "transformer":
            self.attention1 = TokenTransformer(in_chans * k0 * k0, token_dim)
            self.attention2 = TokenTransformer(token_dim * k1 * k1, token_dim)
        else:
            raise EdgevitError(f"tokens_type must be 'performer' or 'transformer', not {tokens_type!r} (the "
                               "official 'convolution' type is an ablation with no weights and is not provided).")
        self.project = nn.Linear(token_dim * k2 * k2, embed_dim)
        # Token grid sides after each split, fixed by the (square) image size: static reshapes, no sqrt at run time.
        self.side0 = _split_size(img_size, k0, s0, p0)
        self.side1 = _split_size(self.side0, k1, s1, p1)
        side2 = _split_size(self.side1, k2, s2, p2)
        if min(self.side0, self.side1, side2) < 1:
            raise EdgevitError(f"img_size {img_size} is too small for T2T soft splits {soft_splits}")
        self.num_patches = side2 ** 2

    @staticmethod
    def _to_map(x: torch.Tensor, side: int) -> torch.Tensor:
        """Row-major tokens (B, side*side, C) as the channels-last map (B, side, side, C) they are: no copy."""
        batch, _, channels = x.shape
        return x.reshape(batch, side, side, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.attention1(self.soft_split0(x))
        x = self.attention2(self.soft_split1(self._to_map(x, self.side0), layout="NHWC"))
        x = self.soft_split2(self._to_map(x, self.side1), layout="NHWC")
        return self.project(x)


class T2TViT(EdgeModel):
    """T2T-ViT with the official constructor names (`tokens_type`, `token_dim`, ...) and state_dict keys.

    The backbone attention scale is head_dim**-0.5. The official constructors switch to embed_dim**-0.5 only under
    `pretrained=True`, a branch that never loaded weights; the released weights were evaluated with head_dim**-0.5
    (T2T issue #62), so `qk_scale` is not offered.
    """

    family = "t2t"

    def __init__(self, img_size: int = 224, tokens_type: str = "performer", in_chans: int = 3,
                 num_classes: int = 1000, embed_dim: int = 768, depth: int = 12, num_heads: int = 12,
                 mlp_ratio: float = 4.0, qkv_bias: bool = False, drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0, token_dim: int = 64, soft_splits: tuple = SOFT_SPLITS) -> None:
        height, width = to_2tuple(img_size)
        if height != width:
            raise EdgevitError(f"T2T-ViT needs a square input (its token grids are square), got img_size={img_size}. "
                               "Pass a single int and resize or crop the images to that square.")
        super().__init__(height, in_chans, num_classes)
        self.num_features = self.embed_dim = embed_dim
        self.tokens_to_token = T2TModule(height, tokens_type, in_chans, embed_dim, token_dim, soft_splits)
        num_patches = self.tokens_to_token.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        # Fixed sinusoid, stored and counted as the official checkpoints do.
        self.pos_embed = nn.Parameter(sinusoid_table(num_patches + 1, embed_dim), requires_grad=False)
        self.pos_drop = Dropout(drop_rate)
        self.blocks = nn.ModuleList([
            Block(embed_dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, eps=1e-5, drop_path=rate)
            for rate in drop_path_rates(drop_path_rate, depth)])
        self.norm = LayerNorm(embed_dim, eps=1e-5)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        init_vit_weights(self, self.cls_token)  # the official init; pos_embed is a fixed sinusoid

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The cls token after the final norm, (B, D), as the official `forward_features`."""
        if x.dim() == 4 and x.shape[-2] != x.shape[-1]:
            raise EdgevitError(f"T2T-ViT takes square images, got {x.shape[-2]}x{x.shape[-1]}. Resize or crop to "
                               f"{self.pretrained_cfg['input_size'][-1]}x{self.pretrained_cfg['input_size'][-1]}.")
        self.check_input(x)
        x = self.tokens_to_token(x)
        x = self.pos_drop(prepend_token(self.cls_token, x) + self.pos_embed)
        for block in self.blocks:
            x = block(x)
        return first_token(self.norm(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return x if pre_logits else self.head(x)


# --- checkpoints ----------------------------------------------------------------------------------------------

def _is_official(state_dict) -> bool:
    return any(key.startswith("tokens_to_token.attention1.") for key in state_dict)


def resize_pos_embed(state_dict: StateDict, model: T2TViT) -> tuple[StateDict, list[str]]:
    """Give `pos_embed` the model's token count when the checkpoint was made at another image size.

    The table is a frozen sinusoid, so it is regenerated for the new count, which is exact (the official
    `resize_pos_embed` interpolates it bicubically, which is not). A table that is not the standard sinusoid
    (edited by hand, or already interpolated) is resampled bicubically instead, so nothing is silently replaced.
    """
    source = state_dict.get("pos_embed")
    target = model.pos_embed
    if source is None or source.shape == target.shape or source.ndim != 3 or source.shape[-1] != target.shape[-1]:
        return state_dict, []
    old_tokens, new_tokens, dim = source.shape[1], target.shape[1], target.shape[-1]
    is_sinusoid = source.is_meta or torch.allclose(
        source.float(), sinusoid_table(old_tokens, dim).to(source.device), atol=1e-5)
    if is_sinusoid:
        state_dict["pos_embed"] = sinusoid_table(new_tokens, dim).to(device=source.device, dtype=source.dtype)
        how = "regenerated the fixed sinusoidal table for the new size, which is exact"
    else:
        side = math.isqrt(model.tokens_to_token.num_patches)
        state_dict["pos_embed"] = resample_abs_pos_embed(source, (side, side), num_prefix_tokens=1)
        how = "interpolated bicubically, as the table is not the standard sinusoid"
    return state_dict, [f"resized pos_embed from {old_tokens} to {new_tokens} tokens: {how}"]


LAYOUTS = (
    KeyLayout("official", detect=_is_official, convert=identity_convert,
              description="yitu-opensource/T2T-ViT release files (edgevit uses the same keys)"),
    KeyLayout("edgevit", detect=lambda state_dict: True, convert=identity_convert),
)

register_family(Family(name="t2t", model_cls=T2TViT, layouts=LAYOUTS, head_keys=("head.",),
                       pos_embed_resizer=resize_pos_embed), VARIANTS)
