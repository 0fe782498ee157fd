"""`create_model`: from a variant name (and optional weights) to a ready model, timm style."""
from __future__ import annotations

import os

from torch import nn

from .checkpoint import fetch_pretrained, load_checkpoint
from .registry import get_family, get_variant, variant_with


def build_model(name: str, img_size: int | None = None, num_classes: int | None = None,
                in_chans: int | None = None) -> nn.Module:
    """A randomly initialised model of a registered variant, with its config attached."""
    variant = variant_with(get_variant(name), img_size=img_size, num_classes=num_classes, in_chans=in_chans)
    model = get_family(variant.family).model_cls(**variant.arch)
    model.variant = variant.name
    model.arch = dict(variant.arch)
    model.pretrained_cfg = variant.cfg.to_dict()
    model.default_cfg = model.pretrained_cfg  # timm's older name for the same dict
    model.weights_source = "random init"
    model.load_report = None
    return model


def create_model(name: str, pretrained: bool = False, weights: str | os.PathLike | None = None,
                 num_classes: int | None = None, img_size: int | None = None,
                 in_chans: int | None = None) -> nn.Module:
    """Build a variant by name or alias (`tnt_ti`, `tnt_s_patch16_224`, ...) in eval mode.

    `weights` loads a local checkpoint of any known layout (timm, official, edgevit); `pretrained` fetches the
    published weights (or takes them from the cache). With `num_classes` different from the checkpoint's, the
    classifier is re-initialised; with another `img_size`, position embeddings are resized. Both are reported
    in `model.load_report.messages`.
    """
    if pretrained and weights is None:  # before building: an offline failure should be instant
        weights = fetch_pretrained(get_variant(name))
    model = build_model(name, img_size=img_size, num_classes=num_classes, in_chans=in_chans)
    if weights is not None:
        model.load_report = load_checkpoint(model, weights, reset_head=num_classes is not None)
        model.weights_source = str(weights)
    return model.eval()
