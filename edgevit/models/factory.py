"""`create_model`: from a variant name (and optional weights) to a ready model, timm style."""
from __future__ import annotations

import os

from torch import nn

from ..errors import EdgevitError
from .checkpoint import fetch_pretrained, load_checkpoint, read_metadata
from .registry import get_family, get_variant, resolve_name, small_input_arch, variant_with


def build_model(name: str, img_size: int | None = None, num_classes: int | None = None,
                in_chans: int | None = None, arch: dict | None = None,
                small_input: bool | None = False) -> nn.Module:
    """A randomly initialised model of a registered variant, with its config attached.

    `arch` overrides constructor arguments (what `model.arch_overrides` and training checkpoints record);
    `small_input` adapts the patch geometry to a small img_size (`registry.small_input_arch`: None decides by
    size, True forces it, False, the default, only changes img_size).
    """
    base = get_variant(name)
    overrides = dict(arch or {})
    if small_input is not False and img_size is not None:
        overrides = {**small_input_arch(base, img_size, small_input), **overrides}
    variant = variant_with(base, img_size=img_size, num_classes=num_classes, in_chans=in_chans, arch=overrides)
    model = get_family(variant.family).model_cls(**variant.arch)
    model.variant = variant.name
    model.arch = dict(variant.arch)
    # what differs from the registered variant: enough, with the variant name, to rebuild this model
    model.arch_overrides = {k: v for k, v in variant.arch.items() if k not in base.arch or base.arch[k] != v}
    model.pretrained_cfg = variant.cfg.to_dict()
    model.default_cfg = model.pretrained_cfg  # timm's older name for the same dict
    model.weights_source = "random init"
    model.load_report = None
    return model


def create_model(name: str, pretrained: bool = False, weights: str | os.PathLike | None = None,
                 num_classes: int | None = None, img_size: int | None = None,
                 in_chans: int | None = None, small_input: bool | None = False) -> nn.Module:
    """Build a variant by name or alias (`tnt_ti`, `tnt_s_patch16_224`, ...) in eval mode.

    `weights` loads a local checkpoint of any known layout (timm, official, edgevit); `pretrained` fetches the
    published weights (or takes them from the cache). With `num_classes` different from the checkpoint's, the
    classifier is re-initialised; with another `img_size`, position embeddings are resized. Both are reported
    in `model.load_report.messages`. A checkpoint written by `edgevit train` also rebuilds the architecture it
    was trained with (small-input geometry, img_size, in_chans, num_classes) and its preprocessing; explicit
    arguments still win.
    """
    if pretrained and weights is None:  # before building: an offline failure should be instant
        weights = fetch_pretrained(get_variant(name))
    trained = read_metadata(weights) if weights is not None else None
    arch = None
    if trained:
        if trained.get("variant") and resolve_name(trained["variant"]) != resolve_name(name):
            raise EdgevitError(f"{weights} holds a trained {trained['variant']}, not {resolve_name(name)}; create "
                               f"it as {trained['variant']!r}.")
        arch = dict(trained.get("arch_overrides") or {})
    model = build_model(name, img_size=img_size, num_classes=num_classes, in_chans=in_chans, arch=arch,
                        small_input=small_input if arch is None else False)
    if weights is not None:
        model.load_report = load_checkpoint(model, weights, reset_head=num_classes is not None)
        model.weights_source = str(weights)
    return model.eval()
