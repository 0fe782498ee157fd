"""Shared test helpers: where ../shared is, and reading its reference fixtures."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from edgevit.models.crossvit import CrossVit
from edgevit.models.nest import Nest
from edgevit.models.t2t import T2TViT
from edgevit.models.tnt import TNT

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
FIXTURES = SHARED / "fixtures"


def require_shared() -> Path:
    if not FIXTURES.is_dir():
        pytest.skip(f"reference fixtures not available: {FIXTURES} is absent")
    return FIXTURES


def load_fixture(source: str, name: str):
    """(hyperparameters dict, checkpoint path, {x, logits, features} tensors, tolerance dict) of a fixture."""
    root = require_shared() / source
    meta = json.loads((root / f"{name}.json").read_text())
    arrays = {k: torch.from_numpy(v) for k, v in np.load(root / f"{name}.npz").items()}
    return meta["hyperparameters"], root / f"{name}.safetensors", arrays, meta["tolerance"], meta


def upstream_keys(source: str, name: str) -> dict:
    """Key names and shapes of a full-size upstream checkpoint, as a state_dict of meta tensors."""
    meta = json.loads((require_shared() / source / "keys" / f"{name}.json").read_text())
    return {k: torch.empty(shape, device="meta") for k, shape in meta["state_dict"].items()}, meta


def reproduce_fixture(model, path, arrays: dict, tolerance: dict, layout: str, name: str) -> torch.Tensor:
    """Load a fixture checkpoint through layout detection, check the layout and the logits; return the features."""
    import edgevit

    report = edgevit.load_checkpoint(model, path)
    assert report.layout == layout
    with torch.no_grad():
        features = model.forward_features(arrays["x"])
        logits = model.forward_head(features)
    assert_close(logits, arrays["logits"], tolerance, f"{name} logits")
    return features


def assert_close(actual: torch.Tensor, expected: torch.Tensor, tolerance: dict, what: str) -> None:
    diff = (actual - expected).abs().max().item()
    assert torch.allclose(actual, expected, atol=tolerance["atol"], rtol=tolerance["rtol"]), \
        f"{what}: max |diff| {diff:.3e} over tolerance {tolerance}"


# Small configurations of each family that exercise every code path (the fast suite exports these).
TINY = {
    "tnt": lambda: TNT(img_size=32, patch_size=8, embed_dim=32, inner_dim=4, depth=2, num_heads_outer=2,
                       num_heads_inner=1, first_stride=4, num_classes=10),
    "tnt_legacy": lambda: TNT(img_size=32, patch_size=8, embed_dim=32, inner_dim=4, depth=1, num_heads_outer=2,
                              num_heads_inner=1, num_classes=10, legacy=True),
    "t2t_performer": lambda: T2TViT(img_size=32, tokens_type="performer", embed_dim=32, depth=2, num_heads=2,
                                     mlp_ratio=2.0, token_dim=16, num_classes=10),
    "t2t_transformer": lambda: T2TViT(img_size=32, tokens_type="transformer", embed_dim=32, depth=1, num_heads=2,
                                       mlp_ratio=2.0, token_dim=16, num_classes=10),
    "nest_same": lambda: Nest(img_size=32, patch_size=2, num_levels=3, embed_dims=(16, 32, 64), num_heads=(1, 2, 4),
                              depths=(1, 1, 1), num_classes=10, pad_type="same"),
    "nest_symmetric": lambda: Nest(img_size=32, patch_size=2, num_levels=3, embed_dims=(16, 32, 64),
                                   num_heads=(1, 2, 4), depths=(1, 1, 1), num_classes=10),
    "crossvit": lambda: CrossVit(img_size=40, img_scale=(1.0, 0.8), patch_size=(8, 16), embed_dim=(16, 32),
                                 depth=((1, 1, 0),), num_heads=(2, 2), mlp_ratio=(2, 2, 1), num_classes=10),
    "crossvit_dagger": lambda: CrossVit(img_size=48, img_scale=(1.0, 32 / 48), patch_size=(12, 16),
                                        embed_dim=(16, 32), depth=((1, 1, 0),), num_heads=(2, 2),
                                        mlp_ratio=(2, 2, 1), multi_conv=True, num_classes=10),
}
