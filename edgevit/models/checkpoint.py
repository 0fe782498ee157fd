"""Reading checkpoints in any upstream layout and loading them, strictly, into edgevit models.

Flow: read the file (safetensors or a weights-only pickle) -> unwrap the training container
(`state_dict_ema`, `state_dict`, `model`) -> strip DataParallel prefixes -> detect the key layout among the
family's known ones (timm, official, edgevit) and map it -> adapt shapes that legitimately differ
(position embeddings at another image size, a stem for another channel count, a new head) -> strict load.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import pickle
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import torch
from torch import nn

from ..errors import EdgevitError

StateDict = dict[str, torch.Tensor]
CHECKPOINT_SUFFIXES = (".safetensors", ".pth", ".pth.tar", ".pt", ".bin", ".tar", ".ckpt")
# Training containers, in the order they are preferred: the T2T-ViT release reports its EMA weights.
CONTAINER_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model", "module")
# Objects timm's training script pickles beside the weights; plain data, safe to allow.
SAFE_PICKLE_GLOBALS = [argparse.Namespace]


@dataclass(frozen=True)
class KeyLayout:
    """One upstream key layout of a family: how to recognise it and how to map it to edgevit's keys."""

    name: str  # e.g. "timm", "official", "timm-legacy"
    detect: Callable[[Mapping[str, torch.Tensor]], bool]
    convert: Callable[[StateDict, nn.Module], StateDict]
    description: str = ""


def identity_convert(state_dict: StateDict, model: nn.Module) -> StateDict:
    return dict(state_dict)


@dataclass
class LoadReport:
    """What `load_checkpoint` did, for the CLI, the manifest and the user."""

    path: str | None
    sha256: str | None
    container: str | None  # which entry of the file held the weights
    layout: str
    messages: list[str] = field(default_factory=list)
    metadata: dict | None = None  # an `edgevit train` checkpoint's metadata entry

    def to_dict(self) -> dict:
        return {"path": self.path, "sha256": self.sha256, "container": self.container, "layout": self.layout,
                "messages": list(self.messages)}


def sha256_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_state_dict(path: str | os.PathLike) -> tuple[StateDict, str | None]:
    """The tensors of a checkpoint file and the container key they came from (None for a bare state_dict)."""
    state_dict, container, _ = read_checkpoint(path)
    return state_dict, container


def read_checkpoint(path: str | os.PathLike) -> tuple[StateDict, str | None, dict | None]:
    """`read_state_dict` plus the file's edgevit training metadata (`METADATA_KEY`), None when it has none."""
    path = Path(path)
    if not path.is_file():
        raise EdgevitError(f"checkpoint not found: {path}")
    if path.name.endswith(".safetensors"):
        try:
            from safetensors import safe_open
            from safetensors.torch import load_file
            with safe_open(str(path), framework="pt") as handle:
                metadata = _metadata_from_safetensors(handle.metadata())
            return load_file(str(path)), None, metadata
        except EdgevitError:
            raise
        except Exception as exc:  # safetensors raises its own error types for corrupt headers
            raise EdgevitError(f"could not read {path} as safetensors ({exc}); the file may be truncated or "
                               "not a safetensors file. Download it again.") from None
    try:
        with torch.serialization.safe_globals(SAFE_PICKLE_GLOBALS):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise EdgevitError(
            f"refusing to load {path}: it needs arbitrary code to unpickle, which could run anything on this "
            f"machine ({str(exc).splitlines()[0]}). Re-save only the weights, e.g. "
            "`torch.save(torch.load(p, weights_only=False)['state_dict'], 'clean.pth')` on a machine you trust, "
            "or convert it to .safetensors.") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as exc:
        raise EdgevitError(f"could not read checkpoint {path}: {exc}. The file may be truncated or corrupt; "
                           "download it again.") from None
    return (*unwrap_state_dict(obj, path), training_metadata(obj))


# --- edgevit's own training checkpoints ------------------------------------------------------------------------
# `edgevit train` saves {"state_dict": <edgevit layout>, "edgevit": {...}}; the metadata entry lets
# `create_model(name, weights=...)` rebuild the trained architecture and preprocessing without repeating them:
#   format 1, variant, family, arch_overrides (constructor arguments that differ from the registered variant,
#   img_size / in_chans / num_classes and any small-input patch geometry), arch (all of them), img_size,
#   in_chans, num_classes, mean, std, interpolation, crop_pct, labels (a known label set or None),
#   class_names, data, epoch, metrics, seed.
METADATA_KEY = "edgevit"


def _as_tuples(value):
    """Lists back to tuples (JSON and safetensors metadata have no tuples; the constructors expect them)."""
    if isinstance(value, list):
        return tuple(_as_tuples(v) for v in value)
    if isinstance(value, dict):
        return {k: _as_tuples(v) for k, v in value.items()}
    return value


def training_metadata(obj) -> dict | None:
    """The edgevit metadata entry of a loaded checkpoint object, or None."""
    if isinstance(obj, Mapping) and isinstance(obj.get(METADATA_KEY), Mapping):
        return dict(obj[METADATA_KEY])
    return None


def _metadata_from_safetensors(header: Mapping[str, str] | None) -> dict | None:
    import json

    if not header or METADATA_KEY not in header:
        return None
    try:
        metadata = json.loads(header[METADATA_KEY])
    except ValueError:
        return None
    if not isinstance(metadata, dict):
        return None
    metadata["arch_overrides"] = _as_tuples(metadata.get("arch_overrides") or {})
    return metadata


def read_metadata(path: str | os.PathLike) -> dict | None:
    """The edgevit metadata of a checkpoint file without reading its tensors (None when there is none).

    A file that cannot be read here returns None; `load_checkpoint` reports the problem when it reads it.
    """
    path = Path(path)
    if not path.is_file():
        return None
    try:
        if path.name.endswith(".safetensors"):
            from safetensors import safe_open
            with safe_open(str(path), framework="pt") as handle:
                return _metadata_from_safetensors(handle.metadata())
        with torch.serialization.safe_globals(SAFE_PICKLE_GLOBALS):
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)  # tensors stay on disk
    except Exception:  # noqa: BLE001 - legacy (non-zip) files cannot be mapped; they hold no metadata anyway
        return None
    return training_metadata(obj)


def apply_metadata_cfg(model: nn.Module, metadata: dict) -> None:
    """The preprocessing and labels a training run recorded, onto `model.pretrained_cfg` where they fit the model."""
    cfg = dict(model.pretrained_cfg)
    channels = cfg["input_size"][0]
    if len(metadata.get("mean") or ()) == channels and len(metadata.get("std") or ()) == channels:
        cfg["mean"], cfg["std"] = list(metadata["mean"]), list(metadata["std"])
    for key in ("interpolation", "crop_pct"):
        if metadata.get(key) is not None:
            cfg[key] = metadata[key]
    if metadata.get("num_classes") == cfg["num_classes"]:
        cfg["labels"] = metadata.get("labels")
        if metadata.get("class_names"):
            cfg["class_names"] = list(metadata["class_names"])
    cfg["url"] = cfg["hf_hub_id"] = None
    cfg["source"] = f"edgevit train on {metadata.get('data', '?')}"
    model.pretrained_cfg = model.default_cfg = cfg


def _trained_hint(metadata: dict | None, path) -> str:
    if not metadata:
        return ""
    overrides = ", ".join(f"{k}={v}" for k, v in (metadata.get("arch_overrides") or {}).items())
    return (f"\n  {path} was written by `edgevit train` for {metadata.get('variant')} ({overrides}): build it with "
            f"edgevit.create_model({metadata.get('variant')!r}, weights=...), which reads that architecture from "
            f"the file.")


def unwrap_state_dict(obj, origin: str | os.PathLike = "checkpoint") -> tuple[StateDict, str | None]:
    container = None
    if isinstance(obj, Mapping):
        for key in CONTAINER_KEYS:
            if isinstance(obj.get(key), Mapping) and obj[key]:
                obj, container = obj[key], key
                break
    if not isinstance(obj, Mapping) or not obj:
        raise EdgevitError(f"{origin} holds no state_dict (found {type(obj).__name__}).")
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise EdgevitError(f"{origin} holds no tensors; top-level keys: {', '.join(list(obj)[:10])}")
    prefix = "module."
    if all(k.startswith(prefix) for k in tensors):
        tensors = {k[len(prefix):]: v for k, v in tensors.items()}
    return tensors, container


def _shape_mismatches(state_dict: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor]):
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    misshaped = [(k, tuple(state_dict[k].shape), tuple(expected[k].shape))
                 for k in expected if k in state_dict and state_dict[k].shape != expected[k].shape]
    return missing, unexpected, misshaped


def detect_layout(state_dict: Mapping[str, torch.Tensor], family) -> KeyLayout | None:
    for layout in family.layouts:
        if layout.detect(state_dict):
            return layout
    return None


def map_to_family(state_dict: StateDict, model: nn.Module, family) -> tuple[StateDict, str]:
    layout = detect_layout(state_dict, family)
    if layout is None:
        return dict(state_dict), "unknown"
    return layout.convert(dict(state_dict), model), layout.name


def _adapt_input_channels(state_dict: StateDict, expected: Mapping[str, torch.Tensor], messages: list[str]) -> None:
    for key, target in expected.items():
        source = state_dict.get(key)
        if (source is None or source.ndim != 4 or source.shape == target.shape
                or source.shape[0] != target.shape[0] or source.shape[2:] != target.shape[2:]):
            continue
        old, new = source.shape[1], target.shape[1]
        if new == 1:
            state_dict[key] = source.sum(dim=1, keepdim=True)
        else:
            repeats = -(-new // old)
            state_dict[key] = source.repeat(1, repeats, 1, 1)[:, :new] * (old / new)
        messages.append(f"adapted {key} from {old} to {new} input channels")


def _drop_head(state_dict: StateDict, expected: Mapping[str, torch.Tensor], head_keys, messages) -> None:
    dropped = [k for k in list(state_dict) if k.startswith(tuple(head_keys))
               and k in expected and state_dict[k].shape != expected[k].shape]
    for key in dropped:
        state_dict[key] = expected[key].detach().clone()
    if dropped:
        messages.append(f"classifier re-initialised for {expected[dropped[0]].shape[0]} classes "
                        f"(checkpoint head had {len(dropped)} tensors of another size)")


def map_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], reset_head: bool = False,
                   origin: str = "the state_dict") -> tuple[StateDict, str, list[str]]:
    """Map a state_dict of any known layout onto `model`'s keys and shapes, or raise listing what does not fit.

    Returns the mapped state_dict, the detected layout name, and messages about what was adapted.
    """
    from .registry import get_family

    family = get_family(model.family)
    state_dict, layout = map_to_family(dict(state_dict), model, family)
    expected = model.state_dict()
    messages: list[str] = []
    if family.pos_embed_resizer is not None:
        state_dict, resize_messages = family.pos_embed_resizer(state_dict, model)
        messages += resize_messages
    _adapt_input_channels(state_dict, expected, messages)
    if reset_head:
        _drop_head(state_dict, expected, family.head_keys, messages)
    missing, unexpected, misshaped = _shape_mismatches(state_dict, expected)
    if missing or unexpected or misshaped:
        raise EdgevitError(_mismatch_message(model, state_dict, layout, missing, unexpected, misshaped, origin))
    return state_dict, layout, messages


def load_checkpoint(model: nn.Module, checkpoint: str | os.PathLike | Mapping[str, torch.Tensor],
                    reset_head: bool = False) -> LoadReport:
    """Load a checkpoint of any known layout into an edgevit model, strictly.

    Position embeddings are resized when the model's image size differs from the checkpoint's, and a
    stem for another channel count is adapted; both are reported. With `reset_head`, a classifier of another
    size is re-initialised (for fine-tuning on a new label set) instead of failing. The preprocessing and class
    names an `edgevit train` checkpoint records go into `model.pretrained_cfg`.
    """
    if isinstance(checkpoint, Mapping):
        state_dict, container = unwrap_state_dict(checkpoint)
        metadata = training_metadata(checkpoint)
        path = sha = None
    else:
        state_dict, container, metadata = read_checkpoint(checkpoint)
        path, sha = str(checkpoint), sha256_of(checkpoint)
    try:
        state_dict, layout, messages = map_state_dict(model, state_dict, reset_head, origin=path or "the state_dict")
    except EdgevitError as exc:
        if not metadata:
            raise
        raise EdgevitError(f"{exc}{_trained_hint(metadata, path or 'the checkpoint')}") from None
    model.load_state_dict(state_dict, strict=True)
    if metadata:
        apply_metadata_cfg(model, metadata)
        messages.append(f"preprocessing (mean/std) and labels from the edgevit training metadata "
                        f"({metadata.get('data')}, epoch {metadata.get('epoch')})")
    return LoadReport(path=path, sha256=sha, container=container, layout=layout, messages=messages,
                      metadata=metadata)


def _listing(title: str, items: list, limit: int = 8) -> str:
    if not items:
        return ""
    shown = "\n".join(f"    {item}" for item in items[:limit])
    more = f"\n    ... and {len(items) - limit} more" if len(items) > limit else ""
    return f"\n  {title} ({len(items)}):\n{shown}{more}"


def _mismatch_message(model, state_dict, layout, missing, unexpected, misshaped, origin) -> str:
    text = (f"checkpoint {origin} does not fit {getattr(model, 'variant', type(model).__name__)} "
            f"(key layout detected: {layout})")
    text += _listing("missing keys", missing)
    text += _listing("unexpected keys", unexpected)
    text += _listing("keys with another shape (key: checkpoint vs model)",
                     [f"{k}: {tuple(a)} vs {tuple(b)}" for k, a, b in misshaped])
    closest = closest_variants(state_dict)
    if closest:
        name, score, closest_layout = closest[0]
        text += (f"\n  closest known variant: {name} ({closest_layout} layout, {score:.0%} of keys and shapes match)."
                 f" Create that variant instead, or pass weights made for this one.")
    return text


def closest_variants(state_dict: Mapping[str, torch.Tensor], limit: int = 3) -> list[tuple[str, float, str]]:
    """Registered variants ranked by how many (key, shape) pairs of the checkpoint they share.

    Models are built on the meta device, so this costs no memory even for the large variants.
    """
    from .factory import build_model
    from .registry import get_family, list_models

    ranked = []
    for name in list_models():
        with torch.device("meta"):
            candidate = build_model(name)
        family = get_family(candidate.family)
        mapped, layout = map_to_family(dict(state_dict), candidate, family)
        expected = candidate.state_dict()
        matching = sum(1 for k, v in mapped.items() if k in expected and expected[k].shape == v.shape)
        ranked.append((name, matching / max(len(expected), len(mapped), 1), layout))
    ranked.sort(key=lambda item: -item[1])
    return ranked[:limit]


# --- published weights ---------------------------------------------------------------------------------------

def weights_cache_dir() -> Path:
    root = os.environ.get("EDGEVIT_CACHE") or os.path.join(torch.hub.get_dir(), "checkpoints", "edgevit")
    return Path(root)


def pretrained_url(cfg) -> str | None:
    if cfg.hf_hub_id:
        endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
        return f"{endpoint}/{cfg.hf_hub_id}/resolve/main/{cfg.hf_file}"
    return cfg.url


def _offline() -> bool:
    return any(os.environ.get(flag, "").lower() in ("1", "true", "yes")
               for flag in ("EDGEVIT_OFFLINE", "HF_HUB_OFFLINE"))


def fetch_pretrained(variant, timeout: float = 15.0) -> Path:
    """The local path of a variant's published weights, downloading them into the cache if needed."""
    url = pretrained_url(variant.cfg)
    if url is None:
        raise EdgevitError(f"{variant.name} has no published weights ({variant.cfg.source}). Train it "
                           "(`edgevit train`) or pass your own checkpoint with --weights PATH.")
    name = url.rstrip("/").split("/")[-1]
    target = weights_cache_dir() / variant.name / name
    if target.is_file():
        return target
    how = (f"Download {url} on a machine with internet access and pass it with --weights PATH "
           f"(or place it at {target}).")
    if _offline():
        raise EdgevitError(f"offline mode is set and {variant.name}'s weights are not cached. {how}")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(partial, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            from ..progress import progress_bar
            with progress_bar(total=total, desc=f"downloading {name}", unit="B") as bar:
                for chunk in iter(lambda: response.read(1 << 20), b""):
                    out.write(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        partial.unlink(missing_ok=True)
        raise EdgevitError(f"could not download {variant.name}'s weights ({exc}). {how}") from None
    partial.replace(target)
    return target
