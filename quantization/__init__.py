"""edgevit.quantization: int8 recipes per backend, with the parts that hurt transformers kept float.

    edgevit convert tnt_ti --target executorch --quantize int8 --calib fashion-mnist --calib-samples 256

`recipes.RECIPES` lists every recipe; `QuantizationPlan` is what the convert pipeline runs per target.
(Installed from the top-level `quantization/` folder.)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from edgevit.errors import EdgevitError

from .recipes import GRAPH_QUANTIZERS, RECIPES, Recipe, get_recipe, litert_quant_config, recipes_for

MIN_CALIBRATION_SAMPLES = 8
FOLD_QUANTIZE = {"tflite": False}  # litert-torch reads the quantize/dequantize pairs itself

__all__ = ["MIN_CALIBRATION_SAMPLES", "QuantizationPlan", "RECIPES", "Recipe", "get_recipe", "recipes_for"]


@dataclass
class QuantizationPlan:
    """One recipe name for every target of a conversion, its calibration images and the modules kept float."""

    recipe_name: str
    calib_source: str | None = None      # fashion-mnist, cifar10, cifar100 or an ImageFolder directory
    calib_samples: int = 256
    data_dir: str | None = None
    float_modules: tuple[str, ...] = ()
    calibration: list[torch.Tensor] | None = None   # (1, C, H, W) inputs from the train split, once loaded
    calibration_source: str | None = None
    reports: dict = field(default_factory=dict)
    qat_path: Path | None = None   # a qat.pt of `edgevit qat`: the plan rebuilds its QAT graph (recipe qat-int8)
    qat_metadata: dict | None = None

    @classmethod
    def from_qat(cls, weights, quantize: str | None = None, precision: str | None = None):
        """The plan for a qat.pt (None when `weights` is another checkpoint and qat-int8 was not asked for)."""
        from .qat import QAT_RECIPE, read_qat

        metadata = read_qat(weights)
        if metadata is None:
            if quantize == QAT_RECIPE:
                raise EdgevitError(f"--quantize {QAT_RECIPE} converts the output of `edgevit qat`: pass its qat.pt as "
                                   f"--weights (got {weights or 'no weights'}).")
            return None
        extra = ([f"--quantize {quantize}"] if quantize not in (None, QAT_RECIPE) else []) + \
            ([f"--precision {precision}"] if precision else [])
        if extra:
            raise EdgevitError(f"{weights} is quantization-aware trained: it converts to its own {QAT_RECIPE} model "
                               f"only; drop {' and '.join(extra)}.")
        return cls(QAT_RECIPE, float_modules=tuple(metadata["qat"].get("float_modules") or ()),
                   qat_path=Path(weights), qat_metadata=metadata)

    def load_calibration(self, cfg: dict, targets, log=lambda message: None) -> None:
        """Calibration images from the train split (never the images verification or parity evaluate on)."""
        if not any(self.recipe(target).calibration for target in targets):
            return
        from edgevit.data import fashion_mnist
        from edgevit.data.datasets import load_images
        from edgevit.data.transforms import to_model_input

        if self.calib_samples < MIN_CALIBRATION_SAMPLES:
            raise EdgevitError(f"--calib-samples {self.calib_samples} is too few: int8 activation ranges need at "
                               f"least {MIN_CALIBRATION_SAMPLES} images (256 or more is better).")
        source = self.calib_source or ("fashion-mnist" if fashion_mnist.available(self.data_dir) else None)
        if source is None:
            self.check_calibration(next(t for t in targets if self.recipe(t).calibration))
        images = load_images(source, "train", self.data_dir, sample=self.calib_samples, seed=0)
        log(f"calibration: {len(images)} images from {images.name}")
        batch = to_model_input(images.images, cfg)
        self.calibration = [image[None] for image in batch]
        self.calibration_source = images.name

    def recipe(self, target: str) -> Recipe:
        if self.qat_metadata:
            from .qat import recipe_for
            return recipe_for(self.qat_metadata, target, self.qat_path)
        return get_recipe(target, self.recipe_name)

    def check_calibration(self, target: str) -> None:
        if self.recipe(target).calibration and (not self.calibration
                                                or len(self.calibration) < MIN_CALIBRATION_SAMPLES):
            have = len(self.calibration or [])
            raise EdgevitError(f"the {target} {self.recipe_name} recipe calibrates its activation ranges and needs "
                               f"at least {MIN_CALIBRATION_SAMPLES} images; got {have}. Pass --calib fashion-mnist "
                               "(apt-get install dataset-fashion-mnist), --calib cifar10 --data DIR, or "
                               "--calib DIR (an ImageFolder), with --calib-samples N.")

    def model_for(self, target: str, model: nn.Module, example: torch.Tensor) -> tuple[nn.Module, dict]:
        """The model the converter takes (PT2E-quantized for graph recipes) and extra converter options."""
        from .pt2e import calibrated, quantized_linear_count

        recipe = self.recipe(target)
        options = dict(recipe.converter_options)
        if recipe.stage != "graph":
            return model, options
        if self.qat_metadata:
            from .qat import load_qat_state, rebuild
            quantized = rebuild(model, example, target, load_qat_state(self.qat_path), self.float_modules,
                                origin=str(self.qat_path),
                                trained_rewrites=self.qat_metadata["qat"].get("graph_rewrites", {}))
            if target == "tflite":
                options["quant_config"] = litert_quant_config(dynamic=False)
            self.reports[target] = quantized_linear_count(quantized)
            return quantized, options
        quantizer = GRAPH_QUANTIZERS[(target, recipe.name)]()
        quantized = calibrated(model, example, quantizer, self.calibration if recipe.calibration else None,
                               f"{target} {recipe.name}", self.float_modules,
                               fold_quantize=FOLD_QUANTIZE.get(target, True), target=target)
        if target == "tflite":
            options["quant_config"] = litert_quant_config(dynamic=False)
        self.reports[target] = quantized_linear_count(quantized)
        return quantized, options

    def finish(self, target: str, artifact: Path, model: nn.Module) -> None:
        """Artifact-stage recipes rewrite the converted artifact in place."""
        recipe = self.recipe(target)
        if recipe.stage == "artifact":
            from .artifact import apply
            self.reports[target] = apply(recipe, artifact, model, self.calibration, self.float_modules)

    def manifest(self, target: str) -> dict:
        recipe = self.recipe(target)
        return {"recipe": recipe.name, "stage": recipe.stage, "summary": recipe.summary,
                "calibration": ({"source": self.calibration_source, "samples": len(self.calibration or []),
                                 "split": "train (disjoint from the verification and evaluation images)"}
                                if recipe.calibration else None),
                "kept_float": ["LayerNorm (both forms)", "softmax", "GELU", "attention matmuls", "residual adds",
                               "T2T Performer random features", "T2T soft split (one-hot unfold)",
                               "CrossViT resize"] + [f"module {m}" for m in self.float_modules],
                **self.reports.get(target, {}), **self._qat_manifest()}

    def _qat_manifest(self) -> dict:
        if not self.qat_metadata:
            return {}
        from .qat import manifest_entry
        return manifest_entry(self.qat_metadata, self.qat_path)
