"""Labelled image sets for calibration, evaluation and training: Fashion-MNIST, CIFAR-10/100 and ImageFolder.

Images stay uint8 at their stored size, (N, H, W) grayscale or (N, H, W, 3) RGB; `batches` turns them into a
model's inputs with `to_model_input`. Calibration comes from the train split and evaluation from the test split,
so quantization is never judged on the images it was calibrated on. ImageFolder files are decoded with Pillow to
RGB (to L when every file is grayscale) and, only where sizes differ, resized to the most common size (bilinear):
models resize again anyway, but a batch needs one shape.
"""
from __future__ import annotations

import pickle
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..errors import EdgevitError
from . import fashion_mnist
from .labels import FASHION_MNIST
from .transforms import to_model_input

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
CIFAR = {  # source -> (folder, {split: batch files}, labels key, meta file, class names key)
    "cifar10": ("cifar-10-batches-py", {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]},
                b"labels", "batches.meta", b"label_names"),
    "cifar100": ("cifar-100-python", {"train": ["train"], "test": ["test"]}, b"fine_labels", "meta",
                 b"fine_label_names"),
}
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"


@dataclass
class ImageSet:
    name: str  # "fashion-mnist/test", "cifar10/train", "imagefolder:/path (val)"
    images: np.ndarray  # uint8, (N, H, W) grayscale or (N, H, W, 3) RGB
    labels: np.ndarray  # int64, (N,)
    classes: list[str]
    indices: np.ndarray  # positions of these items in `origin`, for disjointness checks and reports
    origin: str = ""  # the file collection `indices` count in: equal origins and indices mean the same image

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices) -> ImageSet:
        indices = np.asarray(indices, dtype=np.int64)
        return ImageSet(self.name, self.images[indices], self.labels[indices], self.classes, self.indices[indices],
                        self.origin)

    @property
    def channels(self) -> int:
        return 1 if self.images.ndim == 3 else self.images.shape[-1]


def available_sources() -> list[str]:
    return ["fashion-mnist: 70k 28x28 grayscale clothing images, 10 classes (apt-get install dataset-fashion-mnist, "
            "or --data DIR holding the IDX files)",
            f"cifar10: 60k 32x32 RGB images, 10 classes (--data DIR holding cifar-10-batches-py from {CIFAR_URL})",
            f"cifar100: 60k 32x32 RGB images, 100 fine classes (--data DIR holding cifar-100-python from {CIFAR_URL})",
            "DIR: an ImageFolder, DIR/CLASS/*.png|jpg|jpeg|bmp|webp, with train/ and val/ (or test/) subfolders, "
            "or split 80/20 per class"]


def load_images(source: str, split: str = "test", data_dir: str | None = None, sample: int | None = None,
                seed: int = 0) -> ImageSet:
    """The train or test ("val" is accepted) split of a source named in `available_sources`.

    With `sample`, a seeded class-balanced sample of that many images in source order; an ImageFolder decodes
    only those, so calibrating from a large train folder does not read all of it.
    """
    split = {"val": "test"}.get(split, split)
    if split not in ("train", "test"):
        raise EdgevitError(f"unknown split {split!r}: use train or test (val)")
    if sample is not None and sample < 1:
        raise EdgevitError(f"sample must be at least 1, got {sample}")
    decode = None
    if source == "fashion-mnist":
        images, labels = fashion_mnist.load(split, data_dir)
        name = f"fashion-mnist/{split}"
        found = ImageSet(name, images, labels, list(FASHION_MNIST), np.arange(len(labels)), name)
    elif source in CIFAR:
        found = _load_cifar(source, split, data_dir)
    elif Path(source).is_dir():
        found, decode = _list_image_folder(Path(source), split)
    else:
        raise EdgevitError(f"unknown image source {source!r}: use one of\n  " + "\n  ".join(available_sources()))
    if len(found) == 0:
        raise EdgevitError(f"{found.name} has no images")
    if sample is not None:
        if sample > len(found):
            raise EdgevitError(f"{found.name} has {len(found)} images, fewer than the {sample} requested")
        found = found.subset(balanced_indices(found.labels, sample, seed))
    if decode:
        found.images = decode(found.images)
    return found


def calibration_and_evaluation(source: str, data_dir: str | None = None, calib_samples: int = 256,
                               eval_samples: int | None = None, seed: int = 0) -> tuple[ImageSet, ImageSet]:
    """(a seeded class-balanced sample of the train split, the test split or a seeded class-balanced part of it)."""
    if calib_samples < 1:
        raise EdgevitError(f"calib_samples must be at least 1, got {calib_samples}")
    if eval_samples is not None and eval_samples < 1:
        raise EdgevitError(f"eval_samples must be at least 1, got {eval_samples}")
    calibration = load_images(source, "train", data_dir, calib_samples, seed)
    evaluation = load_images(source, "test", data_dir, eval_samples, seed)
    # Not an `assert`: this must hold under `python -O` too, or quantization results would be silently optimistic.
    if calibration.origin == evaluation.origin and np.intersect1d(calibration.indices, evaluation.indices).size:
        raise AssertionError(f"calibration and evaluation images overlap in {calibration.origin}")
    return calibration, evaluation


def check_compatible(images: ImageSet, num_classes: int, in_chans: int) -> None:
    """Raise EdgevitError when a model with this head and input channels cannot be scored on these images."""
    if len(images.classes) != num_classes:
        raise EdgevitError(f"the model predicts {num_classes} classes, the data has {len(images.classes)}: train a "
                           "model on this data first (edgevit train) or pass weights trained on it")
    if len(images) and not 0 <= images.labels.min() <= images.labels.max() < num_classes:
        raise EdgevitError(f"{images.name} has labels {images.labels.min()}..{images.labels.max()}, outside the "
                           f"model's 0..{num_classes - 1}")
    if (images.channels, in_chans) not in ((1, 1), (3, 3), (1, 3), (3, 1)):
        raise EdgevitError(f"{images.name} has {images.channels}-channel images, the model takes {in_chans} channels "
                           "(only grayscale<->RGB is converted)")


def batches(images: ImageSet, cfg: dict, batch_size: int = 64):
    """(inputs float NCHW for the model `cfg` describes, labels int64) in order, not shuffled."""
    if batch_size < 1:
        raise EdgevitError(f"batch_size must be at least 1, got {batch_size}")
    for start in range(0, len(images), batch_size):
        stop = start + batch_size
        yield to_model_input(images.images[start:stop], cfg), torch.from_numpy(images.labels[start:stop])


def balanced_indices(labels: np.ndarray, count: int, seed: int = 0) -> np.ndarray:
    """`count` positions, as even across classes as the class sizes allow, seeded, in ascending order."""
    generator = np.random.default_rng(seed)
    order = generator.permutation(len(labels))
    shuffled = labels[order]
    rank = np.empty(len(labels), dtype=np.int64)  # position of each item within its class, in shuffled order
    for label in np.unique(shuffled):
        members = shuffled == label
        rank[members] = np.arange(members.sum())
    # A random class order decides which classes get the remainder, so it is not always the low labels.
    class_order = generator.permutation(int(labels.max()) + 1 if len(labels) else 0)
    picked = order[np.lexsort((class_order[shuffled], rank))[:count]]
    return np.sort(picked)


class _ArrayUnpickler(pickle.Unpickler):
    """CIFAR's archives are pickles; allowing only numpy arrays keeps a hostile --data file from running code."""
    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a CIFAR archive")
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as handle:
            return _ArrayUnpickler(handle, encoding="bytes").load()  # the archives were written by Python 2
    except (pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise EdgevitError(f"{path} is not a CIFAR python-version archive ({exc})") from None


def _load_cifar(source: str, split: str, data_dir: str | None) -> ImageSet:
    folder, files, labels_key, meta_file, names_key = CIFAR[source]
    if data_dir is None:
        raise EdgevitError(f"{source} needs --data DIR holding {folder}/ (the python version from {CIFAR_URL})")
    root = Path(data_dir) / folder if (Path(data_dir) / folder).is_dir() else Path(data_dir)
    missing = [name for name in files[split] + [meta_file] if not (root / name).is_file()]
    if missing:
        raise EdgevitError(f"{source}: {', '.join(missing)} not found in {root}; --data DIR must hold {folder}/ "
                           f"(the python version from {CIFAR_URL})")
    parts = [_unpickle(root / name) for name in files[split]]
    data = np.concatenate([np.asarray(batch[b"data"], dtype=np.uint8) for batch in parts])
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy()  # rows are R, G, B planes of 32x32
    labels = np.concatenate([np.asarray(batch[labels_key], dtype=np.int64) for batch in parts])
    classes = [name.decode() for name in _unpickle(root / meta_file)[names_key]]
    return ImageSet(f"{source}/{split}", images, labels, classes, np.arange(len(labels)), f"{source}/{split}")


def _class_files(root: Path) -> dict[str, list[Path]]:
    return {folder.name: sorted(path for path in folder.iterdir() if path.suffix.lower() in IMAGE_SUFFIXES)
            for folder in sorted(root.iterdir()) if folder.is_dir() and not folder.name.startswith(".")}


def _list_image_folder(root: Path, split: str):
    """(an ImageSet whose images are still paths, the function that decodes them).

    root/CLASS/*.png|... with train/ and val/ (or test/) subfolders, or one folder split 80/20 per class. Mode and
    size are decided over both splits, so that calibration and evaluation images agree.
    """
    test_dir = next((root / name for name in ("val", "test") if (root / name).is_dir()), None)
    if (root / "train").is_dir() and test_dir is not None:
        folder = root / "train" if split == "train" else test_dir
        by_split = {"train": _class_files(root / "train"), "test": _class_files(test_dir)}
        classes = sorted(set(by_split["train"]) | set(by_split["test"]))  # labels agree across splits
        groups = [by_split[split].get(class_name, []) for class_name in classes]
        files = [path for group in groups for path in group]
        labels = np.repeat(np.arange(len(classes)), [len(group) for group in groups])
        all_files = files + [path for group in by_split["train" if split == "test" else "test"].values()
                             for path in group]
        positions = np.arange(len(files))
        name, hint = f"imagefolder:{root} ({folder.name})", ""
    else:
        folder, by_class = root, _class_files(root)
        classes = sorted(by_class)
        all_files = [path for class_name in classes for path in by_class[class_name]]
        class_of = np.repeat(np.arange(len(classes)), [len(by_class[class_name]) for class_name in classes])
        is_test = np.zeros(len(all_files), dtype=bool)
        for label, class_name in enumerate(classes):
            members = np.flatnonzero(class_of == label)
            # Seeded by the class name, never by `seed`: the split must stay put across seeds and runs, and
            # adding a class must not reshuffle the others.
            shuffled = np.random.default_rng(zlib.crc32(class_name.encode())).permutation(members)
            is_test[shuffled[:max(1, round(len(members) * 0.2)) if len(members) > 1 else 0]] = True
        positions = np.flatnonzero(is_test == (split == "test"))
        files, labels = [all_files[i] for i in positions], class_of[positions]
        name, hint = f"imagefolder:{root} ({split})", " (a class needs 2 images to be split 80/20)"
    if not all_files:
        raise EdgevitError(f"no images in {root}: expected CLASS/*{'|*'.join(IMAGE_SUFFIXES)} folders, optionally "
                           "under train/ and val/")
    if not files:
        raise EdgevitError(f"{name} has no images{hint}")
    mode, size = _common_mode_and_size(all_files)
    listing = ImageSet(name, np.array(files, dtype=object), labels.astype(np.int64), classes, positions,
                       f"imagefolder:{folder}")
    return listing, lambda chosen: np.stack([_decode(path, mode, size) for path in chosen])


def _common_mode_and_size(paths: list[Path]) -> tuple[str, tuple[int, int]]:
    """("L" when every image is grayscale else "RGB", the most common (width, height)), from the headers alone."""
    modes, sizes = set(), Counter()
    for path in paths:
        with _open(path) as image:
            modes.add(Image.getmodebase(image.mode))
            sizes[image.size] += 1
    return "L" if modes == {"L"} else "RGB", sizes.most_common(1)[0][0]


def _open(path: Path) -> Image.Image:
    try:
        return Image.open(path)
    except (UnidentifiedImageError, OSError) as exc:
        raise EdgevitError(f"cannot read image {path}: {exc}") from None


def _decode(path: Path, mode: str, size: tuple[int, int]) -> np.ndarray:
    with _open(path) as image:
        try:
            image = image.convert(mode)
        except OSError as exc:  # truncated or corrupt pixel data shows up only when decoding
            raise EdgevitError(f"cannot decode image {path}: {exc}") from None
        if image.size != size:
            image = image.resize(size, Image.Resampling.BILINEAR)
        return np.asarray(image, dtype=np.uint8)
