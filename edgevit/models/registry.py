"""The variant table: names, aliases, configurations and where weights come from.

Each family module registers its variants with `register_family`; everything else (`create_model`,
`list_models`, the CLI, the converters) looks variants up here by name.
"""
from __future__ import annotations

import difflib
import fnmatch
from dataclasses import dataclass, field, replace
from typing import Callable

from torch import nn

from ..errors import EdgevitError

IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)
IMAGENET_INCEPTION_MEAN = (0.5, 0.5, 0.5)
IMAGENET_INCEPTION_STD = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class PretrainedCfg:
    """What a user needs to feed the model and where its published weights live."""

    input_size: tuple[int, int, int] = (3, 224, 224)
    mean: tuple[float, ...] = IMAGENET_DEFAULT_MEAN
    std: tuple[float, ...] = IMAGENET_DEFAULT_STD
    crop_pct: float = 0.9
    interpolation: str = "bicubic"
    num_classes: int = 1000
    url: str | None = None  # direct download (official release files)
    hf_hub_id: str | None = None  # timm weights on the Hugging Face hub
    hf_file: str = "model.safetensors"
    source: str = "none"  # one line for people: who published the weights
    labels: str | None = "imagenet-1k"

    def to_dict(self) -> dict:
        return {
            "input_size": list(self.input_size),
            "mean": list(self.mean),
            "std": list(self.std),
            "crop_pct": self.crop_pct,
            "interpolation": self.interpolation,
            "num_classes": self.num_classes,
            "url": self.url,
            "hf_hub_id": self.hf_hub_id,
            "source": self.source,
            "labels": self.labels,
        }

    @property
    def has_weights(self) -> bool:
        return bool(self.url or self.hf_hub_id)


@dataclass(frozen=True)
class Reported:
    """Published figures the implementation is checked against (see shared/specs/models.md)."""

    params_m: float | None = None  # millions, as the official README / timm count them
    gmacs: float | None = None
    top1: float | None = None
    top5: float | None = None


@dataclass(frozen=True)
class Variant:
    name: str
    family: str
    arch: dict
    cfg: PretrainedCfg
    aliases: tuple[str, ...] = ()
    reported: Reported = field(default_factory=Reported)
    description: str = ""


@dataclass(frozen=True)
class Family:
    name: str
    model_cls: Callable[..., nn.Module]
    layouts: tuple  # tuple[checkpoint.KeyLayout, ...], most specific first
    head_keys: tuple[str, ...]  # state_dict prefixes of the classifier, dropped when num_classes changes
    pos_embed_resizer: Callable | None = None  # (state_dict, model) -> (state_dict, messages)


_FAMILIES: dict[str, Family] = {}
_VARIANTS: dict[str, Variant] = {}
_ALIASES: dict[str, str] = {}


def register_family(family: Family, variants: dict[str, dict]) -> None:
    """Register a family and its variant table ({name: dict(arch=..., cfg=..., aliases=..., reported=...)})."""
    _FAMILIES[family.name] = family
    for name, spec in variants.items():
        variant = Variant(name=name, family=family.name, **spec)
        _VARIANTS[name] = variant
        for alias in variant.aliases:
            _ALIASES[alias] = name


def _ensure_registered() -> None:
    # The family modules register themselves on import.
    from . import crossvit, nest, t2t, tnt  # noqa: F401


def families() -> dict[str, Family]:
    _ensure_registered()
    return dict(_FAMILIES)


def get_family(name: str) -> Family:
    _ensure_registered()
    return _FAMILIES[name]


def list_models(pattern: str = "*", family: str | None = None, include_aliases: bool = False) -> list[str]:
    """Variant names matching a shell-style pattern, in registration order."""
    _ensure_registered()
    names = [v.name for v in _VARIANTS.values() if family in (None, v.family)]
    if include_aliases:
        names += [a for a, n in _ALIASES.items() if family in (None, _VARIANTS[n].family)]
    return [n for n in names if fnmatch.fnmatch(n, pattern)]


def resolve_name(name: str) -> str:
    """The canonical variant name for a name or alias; a clear error with suggestions otherwise."""
    _ensure_registered()
    key = name.strip()
    if key.startswith("timm/"):
        key = key[len("timm/"):]
    key = key.split(".")[0]  # timm's pretrained tag (".in1k", ".goog_in1k") names weights, not a variant
    if key in _VARIANTS:
        return key
    if key in _ALIASES:
        return _ALIASES[key]
    candidates = list(_VARIANTS) + list(_ALIASES)
    close = difflib.get_close_matches(key, candidates, n=5, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise EdgevitError(f"unknown model '{name}'.{hint} Run `edgevit list` to see every variant.")


def get_variant(name: str) -> Variant:
    return _VARIANTS[resolve_name(name)]


def variant_with(variant: Variant, img_size: int | None = None, num_classes: int | None = None,
                 in_chans: int | None = None, arch: dict | None = None) -> Variant:
    """The variant with its input size, class count or channels overridden (arch and cfg kept in step).

    `arch` overrides constructor arguments (e.g. the patch geometry from `small_input_arch`, or what an
    `edgevit train` checkpoint recorded); it is applied first, so explicit img_size/in_chans/num_classes win.
    """
    overrides = dict(arch or {})
    img_size = overrides.get("img_size") if img_size is None else img_size
    in_chans = overrides.get("in_chans") if in_chans is None else in_chans
    num_classes = overrides.get("num_classes") if num_classes is None else num_classes
    arch = dict(variant.arch, **overrides)
    c, h, w = variant.cfg.input_size
    if img_size is not None:
        arch["img_size"] = img_size
        h = w = img_size
    if in_chans is not None:
        arch["in_chans"] = in_chans
        c = in_chans
    cfg = variant.cfg
    if num_classes is not None:
        arch["num_classes"] = num_classes
        if num_classes != cfg.num_classes:
            cfg = replace(cfg, labels=None)
        cfg = replace(cfg, num_classes=num_classes)
    cfg = replace(cfg, input_size=(c, h, w))
    if in_chans is not None and in_chans != len(cfg.mean):
        cfg = replace(cfg, mean=(sum(cfg.mean) / len(cfg.mean),) * in_chans,
                      std=(sum(cfg.std) / len(cfg.std),) * in_chans)
    return replace(variant, arch=arch, cfg=cfg)


# --- small inputs (e.g. 32x32 Fashion-MNIST) ------------------------------------------------------------------

# Small-input geometry applies automatically when img_size <= native size / SMALL_INPUT_FACTOR (56 for the 224
# models, 60 for 240, 96 for 384, 102 for 408). Up to there the small geometry's token grid is at most the native
# one; above it, scaling only img_size (position embeddings resized) keeps a sensible grid.
SMALL_INPUT_FACTOR = 4
T2T_SMALL_SOFT_SPLITS = ((5, 2, 2), (3, 2, 1), (3, 1, 1))  # 4x reduction (official 7/4/2, 3/2/1, 3/2/1: 16x)


def native_img_size(variant: Variant) -> int:
    return int(variant.cfg.input_size[-1])


def is_small_input(variant: Variant | str, img_size: int | None) -> bool:
    """Whether `small_input_arch` adapts the geometry by default: img_size <= native size / SMALL_INPUT_FACTOR."""
    variant = get_variant(variant) if isinstance(variant, str) else variant
    return img_size is not None and img_size * SMALL_INPUT_FACTOR <= native_img_size(variant)


def _need_multiple(variant: Variant, img_size: int, multiple: int, why: str) -> None:
    if img_size % multiple:
        lower = max(multiple, img_size - img_size % multiple)
        raise EdgevitError(f"{variant.name} at small inputs needs img_size divisible by {multiple} ({why}); got "
                           f"{img_size}. Use {lower} or {lower + multiple} (the images are resized to it).")


def _small_tnt(variant: Variant, img_size: int) -> dict:
    # 8 px patches of 4x4 words of 2 px (native: 16 px patches of 4x4 words of 4 px): 32 -> a 4x4 patch grid
    _need_multiple(variant, img_size, 8, "8-pixel patches")
    return {"patch_size": 8, "first_stride": 2}


def _small_t2t(variant: Variant, img_size: int) -> dict:
    # soft splits 5/2/2, 3/2/1, 3/1/1: a 4x reduction (32 -> 16 -> 8 -> 8: 64 tokens) instead of 16x
    _need_multiple(variant, img_size, 4, "a 4x soft-split reduction")
    return {"soft_splits": T2T_SMALL_SOFT_SPLITS}


def _small_nest(variant: Variant, img_size: int) -> dict:
    # the first level is a grid of 2**(L-1) x 2**(L-1) blocks; 2 px patches (native 4), or 1 px where 2 do not fit
    blocks_per_side = 2 ** (variant.arch.get("num_levels", 3) - 1)
    if img_size % (2 * blocks_per_side) == 0:
        return {"patch_size": 2}
    _need_multiple(variant, img_size, blocks_per_side, f"{blocks_per_side}x{blocks_per_side} blocks of 1-pixel "
                   "patches; multiples of " + str(2 * blocks_per_side) + " take 2-pixel patches")
    return {"patch_size": 1}


def _small_crossvit(variant: Variant, img_size: int) -> dict:
    # 4 and 8 px patches on the same image (native 12 px on 240 and 16 px on a bicubic 224): no resize branch
    if variant.arch.get("multi_conv"):
        raise EdgevitError(f"{variant.name}'s 3-conv (dagger) stem exists only for 12/16-pixel patches, so it has no "
                           "small-input form. Train crossvit_tiny_240 or crossvit_9_240 at small sizes instead.")
    _need_multiple(variant, img_size, 8, "4- and 8-pixel patches")
    branches = len(variant.arch.get("patch_size", (12, 16)))
    return {"patch_size": (4, 8)[:branches], "img_scale": (1.0,) * branches}


_SMALL_INPUT = {"tnt": _small_tnt, "t2t": _small_t2t, "nest": _small_nest, "crossvit": _small_crossvit}


def small_input_arch(name: str | Variant, img_size: int, small_input: bool | None = None) -> dict:
    """The constructor arguments to change for `img_size` (only the changed keys, `img_size` included), so a model
    trained at small inputs has a sensible token grid. Embed dims, depths and heads stay the variant's own.

    With `small_input=None` the geometry is adapted when img_size <= native / SMALL_INPUT_FACTOR (`is_small_input`);
    True forces it, False never adapts (only img_size changes, position embeddings are resized on load).
    Per family at 32x32:
      tnt       patch_size 8, first_stride 2: 4x4 patches of 4x4 words of 2 px (native 16 px, words of 4 px)
      t2t       soft_splits (5,2,2), (3,2,1), (3,1,1): a 4x reduction, an 8x8 token grid (native 16x)
      nest      patch_size 2 (1 when img_size is not a multiple of 8): 16x16 tokens, 16 blocks of 4x4 (native 4)
      crossvit  patch_size (4, 8), img_scale (1, 1): 8x8 and 4x4 grids on the same image, no resize
    Raises `EdgevitError` for a size the adapted geometry cannot tile (with the nearest sizes that work).
    """
    variant = get_variant(name) if isinstance(name, str) else name
    if small_input is False or (small_input is None and not is_small_input(variant, img_size)):
        return {"img_size": img_size}
    arch = _SMALL_INPUT[variant.family](variant, img_size)
    return {"img_size": img_size, **arch}
