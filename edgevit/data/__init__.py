"""Image data: labelled sets (datasets), preprocessing for a model (transforms), class names (labels)."""
from .datasets import (ImageSet, available_sources, balanced_indices, batches, calibration_and_evaluation,
                       check_compatible, load_images)

__all__ = ["ImageSet", "available_sources", "balanced_indices", "batches", "calibration_and_evaluation",
           "check_compatible", "load_images"]
