"""edgevit: TNT, T2T-ViT, NesT and CrossViT from PyTorch to phones and edge boards."""
from .errors import EdgevitError
from .models import create_model, get_variant, list_models, load_checkpoint

__version__ = "0.1.0"
__all__ = ["EdgevitError", "__version__", "create_model", "get_variant", "list_models", "load_checkpoint"]
