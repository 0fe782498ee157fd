"""Train a float reference model on a small labelled image set (Fashion-MNIST by default), resumably.

`edgevit train tnt_ti --data fashion-mnist --epochs 10` or `edgevit.train.train("tnt_ti", epochs=10)`:

- the model is the variant's own widths, depths and heads with its patch geometry adapted to the small input
  (`edgevit.models.small_input_arch`; at 32x32 for every family), and a head for the data's classes;
- AdamW (no weight decay on biases, norms, position embeddings and class tokens), a linear warm-up over the
  first 5% of the steps then a per-step cosine decay to 0, cross-entropy with label smoothing;
- light augmentation on the stored uint8 images: a random crop after zero padding (2 px at 28-32 px) and, except
  for Fashion-MNIST (whose items all face one way), a horizontal flip;
- normalisation with the training images' own per-channel mean and std (measured on up to 4096 of them, at the
  model's input size and channel count), recorded in the checkpoint;
- after each epoch: loss, top-1 and top-5 on the test split (or a class-balanced part of it), `OUT/last.pt`
  (model, optimizer, scheduler, epoch, RNG state: what `resume` continues from), `OUT/best.pt` when the test
  top-1 improved (the test split is also the selection split: there is no separate validation split) and
  `OUT/metrics.json`;
- deterministic for a seed: seeded init, a per-epoch seeded shuffle and augmentation, restored RNG state on
  resume, and `torch.use_deterministic_algorithms(True, warn_only=True)` on CPU. A run interrupted and resumed
  ends with the same weights as one that was not.

`best.pt` is {"state_dict": <edgevit layout>, "edgevit": metadata} (see `edgevit.models.checkpoint`); with it,
`edgevit.create_model(MODEL, weights="OUT/best.pt")` and `edgevit convert MODEL --weights OUT/best.pt` rebuild the
same architecture, classes, channels and preprocessing without repeating --img-size or --in-chans.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from .errors import EdgevitError
from .progress import progress_bar

# What an omitted setting means for a new run (a resumed run keeps the settings it was started with).
DEFAULTS = {"data": "fashion-mnist", "img_size": 32, "epochs": 10, "batch_size": 128, "lr": 1e-3, "weight_decay": 0.05,
            "label_smoothing": 0.1, "seed": 0, "train_samples": None, "eval_samples": None, "augment": True,
            "small_input": None, "precision": "fp32"}
WARMUP_FRACTION = 0.05  # of all steps, at least one
STATS_SAMPLES = 4096  # training images the normalisation statistics are measured on
NO_FLIP_SOURCES = ("fashion-mnist",)  # items all face one way: a flip makes images the test split never has
KNOWN_LABEL_SETS = ("fashion-mnist",)  # names `edgevit.data.labels.labels_for` knows
# Settings a resume may change: the rest define the run and must match what last.pt recorded.
RESUME_MAY_CHANGE = ("epochs", "data_dir", "precision")
CHECKPOINT_FORMAT = 1
PRECISIONS = ("fp32", "bf16")  # bf16: autocast forward passes; weights, gradients and optimizer state stay fp32


@dataclass
class TrainResult:
    checkpoint: Path  # OUT/best.pt: the weights with the best test top-1, with the metadata to rebuild them
    metrics: dict  # the content of OUT/metrics.json
    out: Path
    last: Path  # OUT/last.pt: the final state, what `resume` continues from
    model: nn.Module | None = None  # the model after the last epoch, on the CPU, in eval mode
    step_losses: list[float] = field(default_factory=list)  # training loss of every step of this call
    resumed_from: int | None = None  # the epoch this call continued after


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def resolve_device(device: str = "auto") -> torch.device:
    """auto: CUDA when available, else the CPU; cpu; cuda or cuda:N (a clear error without CUDA)."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        return torch.device("cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            build = f"built with CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            raise EdgevitError(f"--device {device}: CUDA is not available here (torch {torch.__version__}, {build}, "
                               "no GPU visible). Use --device cpu, or --device auto to take a GPU when there is one.")
        try:
            resolved = torch.device(device)
        except RuntimeError:
            raise EdgevitError(f"--device {device}: not a device name; use auto, cpu, cuda or cuda:N") from None
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise EdgevitError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) visible")
        return resolved
    raise EdgevitError(f"--device {device}: use auto, cpu, cuda or cuda:N")


def _check_settings(settings: dict) -> None:
    def need(ok: bool, message: str) -> None:
        if not ok:
            raise EdgevitError(message)

    need(settings["epochs"] >= 1, f"epochs must be at least 1, got {settings['epochs']}")
    need(settings["batch_size"] >= 1, f"batch size must be at least 1, got {settings['batch_size']}")
    need(settings["lr"] > 0, f"learning rate must be positive, got {settings['lr']}")
    need(settings["weight_decay"] >= 0, f"weight decay must be >= 0, got {settings['weight_decay']}")
    need(0 <= settings["label_smoothing"] < 1, f"label smoothing must be in [0, 1), got {settings['label_smoothing']}")
    need(settings["img_size"] >= 8, f"img_size must be at least 8, got {settings['img_size']}")
    need(settings["precision"] in PRECISIONS, f"precision must be one of {', '.join(PRECISIONS)}, got "
                                              f"{settings['precision']!r}")
    need(settings["in_chans"] in (None, 1, 3), f"in_chans must be 1 or 3, got {settings['in_chans']}")
    for key in ("train_samples", "eval_samples"):
        need(settings[key] is None or settings[key] >= 1, f"{key.replace('_', ' ')} must be at least 1, "
                                                          f"got {settings[key]}")


def augment_images(images: np.ndarray, rng: np.random.Generator, pad: int, flip: bool) -> np.ndarray:
    """Random crop of each uint8 image (N, H, W[, C]) after zero-padding `pad` pixels, and optionally a
    horizontal flip of half of them; the random draws come from `rng` only."""
    count, height, width = images.shape[:3]
    if pad > 0:
        widths = ((0, 0), (pad, pad), (pad, pad)) + ((0, 0),) * (images.ndim - 3)
        windows = np.lib.stride_tricks.sliding_window_view(np.pad(images, widths), (height, width), axis=(1, 2))
        rows, cols = rng.integers(0, 2 * pad + 1, count), rng.integers(0, 2 * pad + 1, count)
        images = windows[np.arange(count), rows, cols]  # (N, H, W) or (N, C, H, W)
        if images.ndim == 4:
            images = images.transpose(0, 2, 3, 1)
        images = np.ascontiguousarray(images)
    if flip:
        flipped = rng.random(count) < 0.5
        images = images.copy()
        images[flipped] = images[flipped][:, :, ::-1]
    return images


def normalisation_stats(images, cfg: dict, seed: int) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of (up to STATS_SAMPLES of) the images as the model sees them, before normalising."""
    from .data.transforms import to_model_input

    picked = np.random.default_rng(seed).permutation(len(images))[:STATS_SAMPLES]
    channels = cfg["input_size"][0]
    raw = {"input_size": cfg["input_size"], "mean": (0.0,) * channels, "std": (1.0,) * channels}
    x = torch.cat([to_model_input(images[np.sort(picked[i:i + 512])], raw) for i in range(0, len(picked), 512)])
    mean = x.mean(dim=(0, 2, 3)).tolist()
    std = x.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist()
    return [round(v, 4) for v in mean], [round(v, 4) for v in std]


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: no decay on biases, norms (1-D) and position embeddings / class tokens (timm's rule)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:  # T2T's fixed sinusoid and Performer features
            continue
        if param.ndim <= 1 or "pos" in name.split(".")[-1] or "cls_token" in name:
            no_decay.append(param)
        else:
            decay.append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def warmup_cosine(warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """LR factor of step s: linear warm-up (s + 1) / warmup, then cosine from 1 to 0 over the remaining steps."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return factor


@torch.no_grad()
def evaluate(model: nn.Module, images, cfg: dict, batch_size: int, device: torch.device,
             desc: str = "evaluating") -> dict:
    """Cross-entropy (no smoothing), top-1 and top-5 in percent over an ImageSet."""
    from .data.datasets import batches
    from .progress import progress_bar

    model.eval()
    k = min(5, cfg["num_classes"])
    loss_sum, top1, topk, seen = 0.0, 0, 0, 0
    with progress_bar(total=math.ceil(len(images) / batch_size), desc=desc, unit="batch") as bar:
        for x, y in batches(images, cfg, batch_size):
            x, y = x.to(device), y.to(device)
            logits = model(x).float()
            loss_sum += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
            best = logits.topk(k, dim=1).indices
            top1 += int((best[:, 0] == y).sum())
            topk += int((best == y[:, None]).any(dim=1).sum())
            seen += len(y)
            bar.update(1)
    return {"test_loss": loss_sum / seen, "top1": 100.0 * top1 / seen, "top5": 100.0 * topk / seen}


def _atomic_save(obj, path: Path) -> None:
    partial = path.with_name(path.name + ".partial")
    torch.save(obj, partial)
    partial.replace(path)


def _write_json(obj, path: Path) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(obj, indent=1) + "\n")
    partial.replace(path)


def _rng_state(device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and state.get("cuda"):
        torch.cuda.set_rng_state_all(state["cuda"])


def _metadata(model: nn.Module, settings: dict, classes: list[str], epoch: int, scores: dict) -> dict:
    from . import __version__

    cfg = model.pretrained_cfg
    return {
        "format": CHECKPOINT_FORMAT, "kind": "edgevit-train", "edgevit_version": __version__,
        "variant": model.variant, "family": model.family,
        "arch_overrides": dict(model.arch_overrides), "arch": dict(model.arch),
        "img_size": cfg["input_size"][-1], "in_chans": cfg["input_size"][0], "num_classes": cfg["num_classes"],
        "mean": list(cfg["mean"]), "std": list(cfg["std"]), "interpolation": cfg["interpolation"],
        "crop_pct": cfg["crop_pct"], "labels": cfg.get("labels"), "class_names": list(classes),
        "data": settings["data"], "epoch": epoch, "metrics": dict(scores), "seed": settings["seed"],
    }


def _load_last(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same advice
        raise EdgevitError(f"cannot resume from {path}: {exc}. Start a new run (another --out, or --force).") from None


def _merge_resume(requested: dict, saved: dict, last: Path) -> dict:
    settings = dict(saved)
    for key, value in requested.items():
        if value is None or key not in saved:
            continue
        if key in RESUME_MAY_CHANGE:
            settings[key] = value
        elif value != saved[key]:
            raise EdgevitError(f"cannot resume {last} with {key}={value!r}: the run was started with "
                               f"{key}={saved[key]!r}. Resume with the run's own settings (omit {key}), or start a "
                               "new run in another --out.")
    return settings


def bf16_matmuls_are_fast(device: torch.device) -> bool:
    """Whether bf16 autocast speeds training up here: CUDA with bf16, or a CPU with AMX / AVX512-BF16 (oneDNN)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def forward_precision(device: torch.device, precision: str):
    """Context for training forward passes: bf16 autocast, or nothing for fp32."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def run_epoch(model, pairs, criterion, optimizer, scheduler, device, desc: str, total: int,
              what: str, precision: str = "fp32") -> tuple[float, list[float]]:
    """One pass of optimizer steps over (inputs, labels) batches: (mean loss, per-step losses)."""
    losses, loss_sum, seen = [], 0.0, 0
    with progress_bar(total=total, desc=desc, unit="batch") as bar:
        for x, y in pairs:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with forward_precision(device, precision):
                loss = criterion(model(x).float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            value = float(loss.detach())
            if not math.isfinite(value):
                raise EdgevitError(f"{what} diverged (loss {value}); lower --lr")
            losses.append(value)
            loss_sum, seen = loss_sum + value * len(y), seen + len(y)
            bar.update(1)
            bar.set_postfix(loss=f"{value:.3f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
    return loss_sum / max(seen, 1), losses


def train(model_name: str, data: str | None = None, *, data_dir: str | os.PathLike | None = None,
          img_size: int | None = None, in_chans: int | None = None, epochs: int | None = None,
          batch_size: int | None = None, lr: float | None = None, weight_decay: float | None = None,
          label_smoothing: float | None = None, device: str = "auto", seed: int | None = None,
          train_samples: int | None = None, eval_samples: int | None = None, augment: bool | None = None,
          small_input: bool | None = None, precision: str | None = None, out: str | os.PathLike | None = None,
          resume: bool = False,
          force: bool = False, stop_after: int | None = None,
          log: Callable[[str], None] | None = _stderr) -> TrainResult:
    """Train `model_name` on `data` (fashion-mnist, cifar10, cifar100 or an ImageFolder directory).

    Omitted settings take `DEFAULTS` (fashion-mnist, img_size 32, 10 epochs, batch 128, lr 1e-3, weight decay 0.05,
    label smoothing 0.1, seed 0, all training and test images, augmentation on, fp32); `in_chans` defaults to the
    data's channels. `precision="bf16"` runs forward passes under bf16 autocast (weights, gradients and optimizer
    state stay fp32; testing runs in fp32): several times faster on GPUs and on CPUs with AMX or AVX512-BF16. `small_input` is passed to `small_input_arch` (None: adapt the patch geometry when img_size <= native
    size / 4). Output goes to `out` (default runs/MODEL); an existing run there is refused unless `resume`
    (continue from last.pt with the run's own settings; `epochs` may grow) or `force` (start over).
    `stop_after` ends this call after that many epochs (the schedule still spans `epochs`), for time-boxed jobs
    that resume later. Returns the paths, the metrics and the final model.
    """
    from .data.datasets import balanced_indices, batches, check_compatible, load_images
    from .models.factory import build_model
    from .models.registry import resolve_name
    log = log or (lambda message: None)
    name = resolve_name(model_name)
    out_dir = Path(out) if out is not None else Path("runs") / name
    last_path, best_path, metrics_path = out_dir / "last.pt", out_dir / "best.pt", out_dir / "metrics.json"
    requested = {"model": name, "data": None if data is None else str(data),
                 "data_dir": None if data_dir is None else str(data_dir),
                 "img_size": img_size, "in_chans": in_chans, "epochs": epochs, "batch_size": batch_size, "lr": lr,
                 "weight_decay": weight_decay, "label_smoothing": label_smoothing, "seed": seed,
                 "train_samples": train_samples, "eval_samples": eval_samples, "augment": augment,
                 "small_input": small_input, "precision": precision}
    if stop_after is not None and stop_after < 1:
        raise EdgevitError(f"stop_after must be at least 1, got {stop_after}")
    saved_state = None
    if resume:
        if not last_path.is_file():
            raise EdgevitError(f"nothing to resume: {last_path} does not exist. Start the run without --resume.")
        saved_state = _load_last(last_path)
        settings = _merge_resume(requested, saved_state["run"], last_path)
    else:
        if (last_path.exists() or best_path.exists()) and not force:
            raise EdgevitError(f"{out_dir} already holds a training run; pass --resume to continue it, --force to "
                               "start over there, or choose another --out.")
        settings = {key: DEFAULTS[key] if value is None and key in DEFAULTS else value
                    for key, value in requested.items()}
    settings.setdefault("precision", "fp32")  # runs from before the setting existed trained in fp32
    _check_settings(settings)
    dev = resolve_device(device)
    if settings["precision"] == "bf16" and not bf16_matmuls_are_fast(dev):
        log(f"note: {dev} has no fast bf16 matmuls (AMX or AVX512-BF16 on CPUs); bf16 may train slower than fp32 here")

    train_set = load_images(settings["data"], "train", settings["data_dir"])
    eval_set = load_images(settings["data"], "test", settings["data_dir"])
    if settings["in_chans"] is None:
        settings["in_chans"] = train_set.channels
    if settings["train_samples"] is not None:
        train_set = train_set.subset(balanced_indices(train_set.labels, min(settings["train_samples"],
                                                                              len(train_set)), settings["seed"]))
    if settings["eval_samples"] is not None:
        eval_set = eval_set.subset(balanced_indices(eval_set.labels, min(settings["eval_samples"], len(eval_set)),
                                                    settings["seed"]))
    classes = list(train_set.classes)

    torch.manual_seed(settings["seed"])
    np.random.seed(settings["seed"])
    model = build_model(name, img_size=settings["img_size"], num_classes=len(classes), in_chans=settings["in_chans"],
                        small_input=settings["small_input"])
    check_compatible(train_set, len(classes), settings["in_chans"])
    cfg = dict(model.pretrained_cfg)
    mean, std = normalisation_stats(train_set.images, cfg, settings["seed"])
    cfg.update(mean=mean, std=std, interpolation="bilinear", crop_pct=1.0, url=None, hf_hub_id=None,
               source=f"edgevit train on {settings['data']}", class_names=classes,
               labels=settings["data"] if settings["data"] in KNOWN_LABEL_SETS else None)
    model.pretrained_cfg = model.default_cfg = cfg
    model.to(dev)

    steps_per_epoch = math.ceil(len(train_set) / settings["batch_size"])
    total_steps = steps_per_epoch * settings["epochs"]
    settings.setdefault("warmup_steps", max(1, round(WARMUP_FRACTION * total_steps)))
    optimizer = torch.optim.AdamW(_param_groups(model, settings["weight_decay"]), lr=settings["lr"])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(settings["warmup_steps"], total_steps))
    criterion = nn.CrossEntropyLoss(label_smoothing=settings["label_smoothing"])
    pad = max(1, min(train_set.images.shape[1:3]) // 14)
    flip = settings["data"] not in NO_FLIP_SOURCES
    augmentation = (f"random crop (zero pad {pad} px)" + (" + horizontal flip" if flip else "")
                    if settings["augment"] else "none")

    start_epoch, history, best, resumed_from, resumes = 0, [], None, None, []
    seconds_before = 0.0
    if saved_state is not None:
        done = saved_state["epoch"]
        if settings["epochs"] < done:
            raise EdgevitError(f"{last_path} has already trained {done} epochs, more than epochs={settings['epochs']}")
        model.load_state_dict(saved_state["state_dict"])
        optimizer.load_state_dict(saved_state["optimizer"])
        scheduler.load_state_dict(saved_state["scheduler"])
        _set_rng_state(saved_state["rng"], dev)
        start_epoch, history, best = done, list(saved_state["history"]), saved_state.get("best")
        resumed_from, resumes = done, list(saved_state.get("resumes", [])) + [done]
        seconds_before = float(saved_state.get("seconds", 0.0))
        log(f"resuming {last_path} after epoch {done} of {settings['epochs']} (optimizer, schedule and RNG state "
            "restored)")
    out_dir.mkdir(parents=True, exist_ok=True)
    if saved_state is None:  # a new run (with force): nothing of an earlier one may be mistaken for its results
        for stale in (best_path, last_path, metrics_path):
            stale.unlink(missing_ok=True)

    def metrics_now(seconds: float) -> dict:
        return {
            "model": name, "family": model.family, "arch": dict(model.arch),
            "arch_overrides": dict(model.arch_overrides),
            "data": {"source": settings["data"], "data_dir": settings["data_dir"], "train": train_set.name,
                     "train_samples": len(train_set), "test": eval_set.name, "test_samples": len(eval_set),
                     "classes": classes, "input_size": list(cfg["input_size"]), "mean": mean, "std": std,
                     "augmentation": augmentation},
            "seed": settings["seed"], "device": str(dev), "torch": torch.__version__,
            "hyperparameters": {key: settings[key] for key in ("epochs", "batch_size", "lr", "weight_decay",
                                                               "label_smoothing", "warmup_steps", "precision")}
                               | {"optimizer": "AdamW", "schedule": "linear warm-up + cosine (per step)",
                                  "steps_per_epoch": steps_per_epoch},
            "epochs": history, "best": best, "seconds": round(seconds, 2), "resumed_after_epochs": resumes,
            "checkpoint": str(best_path),
        }

    if start_epoch == 0:
        log(f"training {name} ({', '.join(f'{k}={v}' for k, v in model.arch_overrides.items())}) on "
            f"{train_set.name} ({len(train_set)} images; testing on {len(eval_set)}) for {settings['epochs']} "
            f"epochs on {dev}" + (" (bf16 autocast)" if settings["precision"] == "bf16" else "") + f", into {out_dir}")

    previous_determinism = torch.are_deterministic_algorithms_enabled(), \
        torch.is_deterministic_algorithms_warn_only_enabled()
    if dev.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
    step_losses: list[float] = []
    started = time.perf_counter()
    last_epoch = settings["epochs"] if stop_after is None else min(settings["epochs"], start_epoch + stop_after)
    try:
        for epoch in range(start_epoch + 1, last_epoch + 1):
            epoch_start = time.perf_counter()
            rng = np.random.default_rng([settings["seed"], epoch])  # the epoch's shuffle and augmentation
            epoch_set = train_set.subset(rng.permutation(len(train_set)))
            if settings["augment"]:
                epoch_set.images = augment_images(epoch_set.images, rng, pad, flip)
            model.train()
            train_loss, losses = run_epoch(model, batches(epoch_set, cfg, settings["batch_size"]), criterion,
                                           optimizer, scheduler, dev, f"epoch {epoch}/{settings['epochs']}",
                                           steps_per_epoch, f"training at epoch {epoch}", settings["precision"])
            step_losses += losses
            scores = evaluate(model, eval_set, cfg, settings["batch_size"], dev, desc=f"testing epoch {epoch}")
            entry = {"epoch": epoch, "train_loss": round(train_loss, 5),
                     **{key: round(value, 5) for key, value in scores.items()},
                     "lr": scheduler.get_last_lr()[0], "seconds": round(time.perf_counter() - epoch_start, 2)}
            history.append(entry)
            state_dict = {key: value.detach().cpu() for key, value in model.state_dict().items()}
            improved = best is None or entry["top1"] > best["top1"]
            if improved:
                best = {key: entry[key] for key in ("epoch", "top1", "top5", "test_loss")}
                _atomic_save({"state_dict": state_dict, "edgevit": _metadata(model, settings, classes, epoch, best)},
                             best_path)
            seconds = seconds_before + time.perf_counter() - started
            _atomic_save({"state_dict": state_dict,
                          "edgevit": _metadata(model, settings, classes, epoch, {k: entry[k] for k in best}),
                          "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "epoch": epoch,
                          "rng": _rng_state(dev), "run": settings, "history": history, "best": best,
                          "resumes": resumes, "seconds": seconds}, last_path)
            _write_json(metrics_now(seconds), metrics_path)
            log(f"epoch {epoch}/{settings['epochs']}: train loss {entry['train_loss']:.4f}, test loss "
                f"{entry['test_loss']:.4f}, top-1 {entry['top1']:.2f}%, top-5 {entry['top5']:.2f}%, "
                f"{entry['seconds']:.1f} s" + (" (best)" if improved else ""))
    finally:
        if dev.type == "cpu":
            torch.use_deterministic_algorithms(previous_determinism[0], warn_only=previous_determinism[1])

    if start_epoch >= last_epoch:
        log(f"{last_path} already holds all {settings['epochs']} epochs; nothing to train")
    metrics = metrics_now(seconds_before + time.perf_counter() - started)
    if history:
        _write_json(metrics, metrics_path)
    return TrainResult(checkpoint=best_path, metrics=metrics, out=out_dir, last=last_path,
                       model=model.cpu().eval(), step_losses=step_losses, resumed_from=resumed_from)
