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
                 in_chans: int | None = None) -> Variant:
    """The variant with its input size, class count or channels overridden (arch and cfg kept in step)."""
    arch = dict(variant.arch)
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
