"""Shared test helpers: where ../shared is, and reading its reference fixtures."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

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


def assert_close(actual: torch.Tensor, expected: torch.Tensor, tolerance: dict, what: str) -> None:
    diff = (actual - expected).abs().max().item()
    assert torch.allclose(actual, expected, atol=tolerance["atol"], rtol=tolerance["rtol"]), \
        f"{what}: max |diff| {diff:.3e} over tolerance {tolerance}"
