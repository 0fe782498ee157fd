"""Building blocks shared by the four families, written so that a strict `torch.export` gives a graph every
edge backend takes: no im2col/gather, no bicubic resize, attention as 3-D `bmm`, tensors of rank <= 4.

Each export-friendly rewrite here is exact to the op it replaces (tests/models/test_layers.py checks it).
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

LAYER_NORM_FORMS = ("native", "matmul")
CONV_FORMS = ("native", "gemm")


class LayerNorm(nn.LayerNorm):
    """`nn.LayerNorm` (same parameter names) that can compute its statistics as matmuls.

    ExecuTorch's XNNPACK backend has no LayerNorm kernel, so every `native_layer_norm` breaks the graph into
    a new partition. With `form = "matmul"` the means come from a matmul with a constant averaging vector,
    which XNNPACK runs as a GEMM, and the whole model stays in one partition. Other backends (Core ML, ONNX)
    have a native LayerNorm and keep `form = "native"`. The export path chooses; see `layer_norm_form`.
    """

    form: str = "native"

    def __init__(self, normalized_shape: int, eps: float = 1e-5, **kwargs) -> None:
        super().__init__(normalized_shape, eps=eps, **kwargs)
        width = self.normalized_shape[-1]
        self.register_buffer("averaging", torch.full((1, width), 1.0 / width), persistent=False)
        self.register_buffer("epsilon", torch.full((1,), float(eps)), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.form == "native":
            return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        # the means as `linear` with a constant (1, C) averaging row: XNNPACK runs it as a fully-connected
        # layer on input of any rank, so no reshape is needed around it, and its bias carries eps
        centred = x - F.linear(x, self.averaging)
        y = centred * torch.rsqrt(F.linear(centred * centred, self.averaging, self.epsilon))
        if self.weight is not None:
            y = y * self.weight + self.bias
        return y


class Conv2d(nn.Conv2d):
    """`nn.Conv2d` (same parameter names) that can run as one matrix multiply on a channels-last map.

    ExecuTorch's XNNPACK convolution ran at a third to a half of its own GEMM speed on this project's x86 host
    (NesT-T's 3x3 96->192 conv on a 56x56 map: 41 ms, LiteRT's XNNPACK 17 ms; the same conv as patches + GEMM:
    22 ms). With `form = "gemm"` the patches are gathered with slices and one concatenation (im2col without a
    gather op) and multiplied by the weight reshaped to (out, kh*kw*in); the converter folds that reshape into
    a constant. Only stride-1 convs and non-overlapping patch convs (stride = kernel, no padding) have this form;
    the others always run natively (patch convs: square kernels). The cost is memory: the patch matrix is kh*kw
    times the input map.
    """

    form: str = "native"

    @property
    def has_gemm_form(self) -> bool:
        simple = (self.groups == 1 and self.dilation == (1, 1) and self.padding_mode == "zeros"
                  and not isinstance(self.padding, str))
        patches = self.stride == self.kernel_size and self.kernel_size[0] == self.kernel_size[1] \
            and self.padding == (0, 0)
        return simple and (self.stride == (1, 1) or patches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.form == "native" or not self.has_gemm_form:
            return super().forward(x)
        return self.channels_last(x, input_layout="NCHW").permute(0, 3, 1, 2)

    def channels_last(self, x: torch.Tensor, input_layout: str = "NHWC") -> torch.Tensor:
        """The convolution of `x` (NHWC, or NCHW when `input_layout` says so) as a (B, H', W', out) map."""
        if self.form == "native" or not self.has_gemm_form:
            return super().forward(x if input_layout == "NCHW" else x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        x = x.permute(0, 2, 3, 1) if input_layout == "NCHW" else x
        weight = self.weight.permute(0, 2, 3, 1).reshape(self.out_channels, -1)  # (out, kh*kw*in), like patches
        patches = self._patches(x)
        batch, height, width, size = patches.shape
        # a 3-D matmul: XNNPACK's dynamically quantized linear takes no 4-D input
        out = F.linear(patches.reshape(batch, height * width, size), weight, self.bias)
        return out.reshape(batch, height, width, self.out_channels)

    def _patches(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, C) -> (B, H', W', kh*kw*C), each window's values ordered (row, column, channel)."""
        (kernel_h, kernel_w), (pad_h, pad_w) = self.kernel_size, self.padding
        batch, height, width, channels = x.shape
        if self.stride == self.kernel_size and self.stride != (1, 1):  # non-overlapping square patches
            grid_h, grid_w = height // kernel_h, width // kernel_w
            if (height, width) != (grid_h * kernel_h, grid_w * kernel_w):  # the strided conv drops the rest; a
                x = x[:, :grid_h * kernel_h, :grid_w * kernel_w]  # whole-range slice would be an alias_copy
            return blockify(x, kernel_h).reshape(batch, grid_h, grid_w, kernel_h * kernel_w * channels)
        if kernel_h == kernel_w == 1:
            return x
        x = F.pad(x, (0, 0, pad_w, pad_w, pad_h, pad_h))
        out_h, out_w = height + 2 * pad_h - kernel_h + 1, width + 2 * pad_w - kernel_w + 1
        return torch.cat([x[:, i:i + out_h, j:j + out_w, :] for i in range(kernel_h) for j in range(kernel_w)],
                         dim=3)


def blockify(x: torch.Tensor, block_size: int) -> torch.Tensor:
    """(B, H, W, C) -> (B, T, N, C): row-major blocks of block_size², row-major tokens inside each block.

    timm reshapes to 6-D (B, gh, bs, gw, bs, C); folding (B, gh) and (bs, C) keeps every tensor rank 4.
    """
    batch, height, width, channels = x.shape
    grid_h, grid_w = height // block_size, width // block_size
    x = x.reshape(batch * grid_h, block_size, grid_w, block_size * channels).permute(0, 2, 1, 3)
    return x.reshape(batch, grid_h * grid_w, block_size * block_size, channels)


def deblockify(x: torch.Tensor, grid: tuple[int, int], block_size: int) -> torch.Tensor:
    """The inverse of `blockify`: (B, T, N, C) -> (B, H, W, C) for a grid of (gh, gw) blocks."""
    batch, _, _, channels = x.shape
    grid_h, grid_w = grid
    x = x.reshape(batch * grid_h, grid_w, block_size, block_size * channels).permute(0, 2, 1, 3)
    return x.reshape(batch, grid_h * block_size, grid_w * block_size, channels)


class OneHotUnfold(nn.Module):
    """`nn.Unfold(k, stride, padding)` followed by `.transpose(1, 2)`: (B, L, C*k*k) tokens, channel `c*k*k + i*k + j`
    holding input channel c at kernel offset (i, j), exactly the order of `nn.Unfold`.

    Natively a grouped convolution with fixed one-hot kernels: a plain conv runs on every backend and NPU, while
    im2col lowers to gathers that none delegate. The kernels are a constant, not a parameter, so checkpoints and
    parameter counts are unchanged. With `form = "gemm"` (ExecuTorch, whose XNNPACK convolutions run slowly: see
    `Conv2d`) a channels-last map is unfolded with slices and one concatenation instead, and needs no layout
    change around it: T2T-ViT-7's second soft split (64 channels, 56x56) took 1.4 ms instead of 2.5 ms in
    ExecuTorch (LiteRT: 1.4 ms as a conv). An NCHW image (the first split, 3 channels) stays a conv in both forms:
    its slices cost more there (7.3 ms vs 4.3 ms) because the channel order needs a transpose with 3-wide rows.
    """

    counts_macs = False  # structural: the published MAC counts have no unfold cost
    form: str = "native"

    def __init__(self, in_chans: int, kernel_size: int, stride: int, padding: int) -> None:
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        taps = kernel_size * kernel_size
        weight = torch.eye(taps).reshape(taps, 1, kernel_size, kernel_size).repeat(in_chans, 1, 1, 1)
        self.register_buffer("weight", weight, persistent=False)
        self.in_chans = in_chans

    def forward(self, x: torch.Tensor, layout: str = "NCHW") -> torch.Tensor:
        """(B, C, H, W) or, with `layout="NHWC"`, (B, H, W, C) -> (B, L, C*k*k)."""
        if layout == "NHWC":
            if self.form == "gemm":
                return self._slices(x)
            x = x.permute(0, 3, 1, 2)
        out = F.conv2d(x, self.weight, stride=self.stride, padding=self.padding, groups=self.in_chans)
        return out.flatten(2).transpose(1, 2)

    def _slices(self, x: torch.Tensor) -> torch.Tensor:
        """The unfold of a (B, H, W, C) map with static slices (rank <= 4) and one concatenation. The padded map
        is cut into rows of `stride`-high bands so that kernel row i = a*stride + b is band a (offset by the output
        row) at row b; columns the same way inside each row."""
        kernel, stride, padding = self.kernel_size, self.stride, self.padding
        batch, height, width, channels = x.shape
        out_h, out_w = (height + 2 * padding - kernel) // stride + 1, (width + 2 * padding - kernel) // stride + 1
        reach = (kernel - 1) // stride  # the bands a window spans beyond its own
        bands_h, bands_w = out_h + reach, out_w + reach
        x = F.pad(x, (0, 0, padding, bands_w * stride - width - padding, padding, bands_h * stride - height - padding))
        bands = x.reshape(batch, bands_h, stride, bands_w * stride * channels)
        taps = []
        for i in range(kernel):
            band, row = divmod(i, stride)
            rows = bands[:, band:band + out_h, row:row + 1, :].reshape(batch * out_h, bands_w, stride * channels)
            for j in range(kernel):
                column_band, column = divmod(j, stride)
                taps.append(rows[:, column_band:column_band + out_w, column * channels:(column + 1) * channels])
        out = torch.cat(taps, dim=2)  # (B*out_h, out_w, k*k*C): offset-major, nn.Unfold is channel-major
        out = out.reshape(batch * out_h * out_w, kernel * kernel, channels).transpose(1, 2)
        return out.reshape(batch, out_h * out_w, channels * kernel * kernel)


# The layers with an export-only second form, by the keyword `export_forms` takes; targets choose per backend.
DUAL_FORM_LAYERS = {"layer_norm": (LayerNorm, LAYER_NORM_FORMS), "conv": ((Conv2d, OneHotUnfold), CONV_FORMS)}


def set_export_forms(model: nn.Module, **forms: str) -> None:
    """Switch every edgevit LayerNorm (`layer_norm=`) and/or Conv2d (`conv=`) in `model` to the given form."""
    for kind, form in forms.items():
        if kind not in DUAL_FORM_LAYERS:
            raise ValueError(f"no layer kind {kind!r}; forms exist for {', '.join(DUAL_FORM_LAYERS)}")
        layer_type, allowed = DUAL_FORM_LAYERS[kind]
        if form not in allowed:
            raise ValueError(f"{kind} form must be one of {allowed}, not {form!r}")
        for module in model.modules():
            if isinstance(module, layer_type):
                module.form = form


@contextmanager
def export_forms(model: nn.Module, **forms: str) -> Iterator[nn.Module]:
    """Temporarily switch layers to an export form (see `set_export_forms`); the previous forms come back."""
    types = tuple(DUAL_FORM_LAYERS[kind][0] for kind in forms if kind in DUAL_FORM_LAYERS)
    previous = [(m, m.form) for m in model.modules() if isinstance(m, types)]
    set_export_forms(model, **forms)
    try:
        yield model
    finally:
        for module, old in previous:
            module.form = old


def layer_norm_form(model: nn.Module, form: str) -> Iterator[nn.Module]:
    """Temporarily switch every edgevit LayerNorm in `model` to `form` ("native" or "matmul")."""
    return export_forms(model, layer_norm=form)


class Dropout(nn.Dropout):
    """`nn.Dropout` that is absent from the graph in eval mode: an exported eval-mode `nn.Dropout` still
    leaves a copy of its input behind (50 of them in TNT-Ti), one more node for every lowering pass."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) if self.training and self.p > 0 else x


class Mlp(nn.Module):
    """timm's Mlp: fc1 -> GELU -> fc2 (parameter names as timm's, so checkpoints map one to one)."""

    def __init__(self, in_features: int, hidden_features: int, out_features: int | None = None,
                 act_layer: type[nn.Module] = nn.GELU, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden_features, out_features or in_features)
        self.drop = Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class DropPath(nn.Module):
    """Stochastic depth for training; the identity in eval mode (and so in every export)."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


def init_vit_weights(model: nn.Module, *embeddings: torch.Tensor) -> None:
    """timm's ViT init: truncated normal (std 0.02) for the given embeddings and every Linear, zero biases."""
    for tensor in embeddings:
        nn.init.trunc_normal_(tensor, std=0.02)
    for module in model.modules():
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)


def drop_path_rates(drop_path_rate: float, depth: int) -> list[float]:
    return [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]


def split_heads(x: torch.Tensor, num_heads: int, parts: int = 1) -> list[torch.Tensor]:
    """A fused projection (B, N, parts*C) -> `parts` tensors (H*B, N, C/H): heads folded into the batch.

    Channels are ordered (part, head, head_dim), the layout of every fused qkv/qk weight upstream. Heads are
    folded head-major (index h*B + b), so one transpose and one copy serve all parts for any batch (TNT's
    inner attention runs at a batch of 196 patches), each part is then a contiguous slice, and every tensor
    stays rank 3. `attend` unfolds the same order.
    """
    batch, tokens, channels = x.shape
    head_dim = channels // (parts * num_heads)
    heads = x.reshape(batch * tokens, parts * num_heads, head_dim).transpose(0, 1)
    heads = heads.reshape(parts * num_heads * batch, tokens, head_dim)
    part = num_heads * batch
    return [heads] if parts == 1 else [heads[i * part:(i + 1) * part] for i in range(parts)]


def _twice(x: torch.Tensor) -> torch.Tensor:
    """(1, N, C) -> (2, N, C), two copies. Built from two distinct slices: ExecuTorch's XNNPACK partitioner leaves
    a concatenation that repeats one input (`cat([x, x])`, like `repeat`) out of the delegate."""
    tokens, channels = x.shape[1], x.shape[2]
    head, tail = x[:, :1], x[:, 1:]
    return torch.cat([head, tail, head, tail], dim=1).reshape(2, tokens, channels)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, batch: int, scale: float,
           head_minor: bool = False) -> torch.Tensor:
    """softmax(q kᵀ · scale) v for heads folded as `split_heads` does, q (H*B, Nq, D) and k, v (H*B, Nk, D|Dv)
    -> (B, Nq, H*Dv).

    Written with 3-D `bmm` and explicit softmax: a 4-D `q @ k.transpose` lowers to `expand_copy` + `bmm`,
    and XNNPACK does not delegate `expand_copy`; SDPA decomposes into ops it does not delegate either.
    `head_minor` orders the output channels `d * H + h` (timm's NesT does this; its proj weights expect it).
    """
    num_heads, q_tokens, head_dim = q.shape[0] // batch, q.shape[1], v.shape[-1]
    if q.shape[0] == 1 and q_tokens % 2 == 0:
        # One head of one image (T2T-ViT-t's token transformers): LiteRT turns a batch-1 q·kᵀ into a
        # FULLY_CONNECTED whose weights are activations, which XNNPACK leaves on the reference CPU kernel (at 224
        # px, 3136x3136x147 MACs). Halving the queries into a batch of two keeps it a BATCH_MATMUL; the halves are
        # contiguous, so the reshape below puts them back in order.
        half = q_tokens // 2
        q = torch.cat([q[:, :half], q[:, half:]], dim=0)
        k, v = _twice(k), _twice(v)
    attn = torch.softmax(torch.bmm(q * scale, k.transpose(1, 2)), dim=-1)
    out = torch.bmm(attn, v).reshape(num_heads, batch * q_tokens, head_dim)
    out = out.permute(1, 2, 0) if head_minor else out.transpose(0, 1)
    return out.reshape(batch, q_tokens, num_heads * head_dim)


def multi_head_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int, scale: float,
                         head_minor: bool = False) -> torch.Tensor:
    """softmax(q kᵀ · scale) v over heads, for separate projections q (B, Nq, C) and k, v (B, Nk, C)."""
    (q,), (k,), (v,) = (split_heads(t, num_heads) for t in (q, k, v))
    return attend(q, k, v, q.shape[0] // num_heads, scale, head_minor)


class Attention(nn.Module):
    """ViT self-attention with timm's parameter names (`qkv`, `proj`)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = False, head_minor: bool = False,
                 attn_drop: float = 0.0, proj_drop: float = 0.0) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.head_minor = head_minor
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # slices, not unbind/split: XNNPACK delegates slice_copy, not squeeze/split copies
        q, k, v = split_heads(self.qkv(x), self.num_heads, parts=3)
        return self.proj_drop(self.proj(attend(q, k, v, x.shape[0], self.scale, self.head_minor)))


class Block(nn.Module):
    """Pre-norm ViT block (timm's `Block` names: norm1, attn, norm2, mlp)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = False,
                 eps: float = 1e-5, drop_path: float = 0.0, head_minor: bool = False,
                 act_layer: type[nn.Module] = nn.GELU) -> None:
        super().__init__()
        self.norm1 = LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, head_minor=head_minor)
        self.norm2 = LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


def prepend_token(token: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """cat([token, x], dim=1); no `expand` at batch 1, which a static batch-1 export then never contains."""
    if x.shape[0] != token.shape[0]:
        token = token.expand(x.shape[0], -1, -1)
    return torch.cat([token, x], dim=1)


def first_token(x: torch.Tensor) -> torch.Tensor:
    """x[:, 0] as a slice + reshape: `select` is not delegated by XNNPACK, a slice is."""
    return x[:, :1].reshape(x.shape[0], x.shape[-1])


def bicubic_matrix(in_size: int, out_size: int) -> torch.Tensor:
    """(out, in) matrix M with M @ v == PyTorch's bicubic resize of v (align_corners=False, no antialias).

    Read back from PyTorch's own kernel (the resize of each one-hot vector) rather than re-derived: the kernel
    rounds source coordinates in float32, and a float64 re-derivation differs by up to 1e-4 at 240 -> 224.
    """
    basis = torch.eye(in_size).reshape(in_size, 1, in_size, 1)
    resized = F.interpolate(basis, size=(out_size, 1), mode="bicubic", align_corners=False)
    return resized.reshape(in_size, out_size).t()


class SeparableResize(nn.Module):
    """Bicubic resize of an NCHW image as two matmuls with constant interpolation matrices.

    Bicubic interpolation is linear and separable, so `F.interpolate(x, size, mode="bicubic")` equals
    `Mh @ x @ Mwᵀ`. TFLite has no bicubic op and several NPUs reject cubic Resize; matmuls run everywhere.
    Both products are 2-D `mm`s (a 4-D matmul lowers to `expand` + `bmm`, and XNNPACK rejects `expand_copy`).
    """

    counts_macs = False

    def __init__(self, in_size: tuple[int, int], out_size: tuple[int, int]) -> None:
        super().__init__()
        self.in_size, self.out_size = tuple(in_size), tuple(out_size)
        self.register_buffer("rows_t", bicubic_matrix(in_size[0], out_size[0]).t().contiguous(), persistent=False)
        self.register_buffer("cols_t", bicubic_matrix(in_size[1], out_size[1]).t().contiguous(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        out_height, out_width = self.out_size
        # H first, so the result needs no transpose at the end (a strided output costs a copy outside XNNPACK)
        x = x.transpose(2, 3).reshape(batch * channels * width, height)
        x = torch.mm(x, self.rows_t)  # resize H: (B*C*W, H')
        x = x.reshape(batch * channels, width, out_height).transpose(1, 2).reshape(-1, width)
        x = torch.mm(x, self.cols_t)  # resize W: (B*C*H', W')
        return x.reshape(batch, channels, out_height, out_width)


def resample_abs_pos_embed(pos_embed: torch.Tensor, new_grid: tuple[int, int],
                           num_prefix_tokens: int = 1, old_grid: tuple[int, int] | None = None) -> torch.Tensor:
    """Resize a (1, prefix + H*W, C) position embedding to a new token grid (bicubic, as timm does)."""
    if old_grid is None:
        side = int(math.sqrt(pos_embed.shape[1] - num_prefix_tokens))
        old_grid = (side, side)
    if tuple(old_grid) == tuple(new_grid):
        return pos_embed
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    channels = grid.shape[-1]
    grid = grid.reshape(1, old_grid[0], old_grid[1], channels).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=new_grid, mode="bicubic", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], channels).to(pos_embed.dtype)
    return torch.cat([prefix, grid], dim=1)


def to_2tuple(x) -> tuple:
    return tuple(x) if isinstance(x, (tuple, list)) else (x, x)
