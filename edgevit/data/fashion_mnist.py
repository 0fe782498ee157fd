"""Fashion-MNIST from Debian's `dataset-fashion-mnist` package (IDX files), or a directory holding them."""
from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

from ..errors import EdgevitError

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
INSTALL_HINT = ("Install it with `sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or pass --data DIR "
                "holding the four IDX files (train/t10k images and labels, optionally .gz).")


def default_dir() -> Path:
    return Path(os.environ.get("EDGEVIT_FASHION_MNIST", DEBIAN_DIR))


def available(directory: str | os.PathLike | None = None) -> bool:
    directory = Path(directory) if directory else default_dir()
    return all(_find(directory, name) for pair in FILES.values() for name in pair)


def _find(directory: Path, name: str) -> Path | None:
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def read_idx(path: Path) -> np.ndarray:
    """An IDX array (the MNIST file format: magic, dims, big-endian sizes, then uint8 data)."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        data = handle.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise EdgevitError(f"{path} is not an unsigned-byte IDX file (bad magic number)")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if array.size != int(np.prod(shape)):
        raise EdgevitError(f"{path} is truncated: expected {int(np.prod(shape))} values, found {array.size}")
    return array.reshape(shape)


def load(split: str = "test", directory: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, 28, 28), labels int64 (N,)) of the train or test split."""
    directory = Path(directory) if directory else default_dir()
    images_name, labels_name = FILES[split]
    images_path, labels_path = _find(directory, images_name), _find(directory, labels_name)
    if images_path is None or labels_path is None:
        raise EdgevitError(f"Fashion-MNIST not found in {directory}. {INSTALL_HINT}")
    images, labels = read_idx(images_path), read_idx(labels_path).astype(np.int64)
    if len(images) != len(labels):
        raise EdgevitError(f"{directory}: {len(images)} images but {len(labels)} labels")
    return images, labels
