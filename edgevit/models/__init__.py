"""Reference implementations of TNT, T2T-ViT, NesT and CrossViT, export-clean, loading upstream weights."""
from .checkpoint import KeyLayout, LoadReport, load_checkpoint, map_state_dict, read_state_dict
from .factory import build_model, create_model
from .layers import Conv2d, LayerNorm, export_forms, layer_norm_form, set_export_forms
from .registry import (PretrainedCfg, Variant, families, get_variant, is_small_input, list_models, resolve_name,
                       small_input_arch, variant_with)

__all__ = [
    "Conv2d", "KeyLayout", "LayerNorm", "LoadReport", "PretrainedCfg", "Variant", "build_model", "create_model",
    "export_forms", "families", "get_variant", "is_small_input", "layer_norm_form", "list_models", "load_checkpoint",
    "map_state_dict", "read_state_dict", "resolve_name", "set_export_forms", "small_input_arch", "variant_with",
]
