"""What every edgevit model has, whichever family: its config, the timm-style forward split."""
from __future__ import annotations

import torch
from torch import nn


class EdgeModel(nn.Module):
    """Base of the four families' models.

    `create_model` replaces `pretrained_cfg` with the variant's full config; a model built directly from its
    class gets a minimal one so analysis and export helpers know its input size.
    """

    family: str = ""

    def __init__(self, img_size: int, in_chans: int, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.variant = None
        self.pretrained_cfg = {"input_size": [in_chans, img_size, img_size], "num_classes": num_classes}
        self.default_cfg = self.pretrained_cfg

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def check_input(self, x: torch.Tensor) -> None:
        """A clear error for an image of the wrong size, before a cryptic reshape failure deep inside."""
        expected = tuple(self.pretrained_cfg["input_size"])
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            from ..errors import EdgevitError
            raise EdgevitError(
                f"{self.variant or type(self).__name__} takes input of shape (B, {', '.join(map(str, expected))}), "
                f"got {tuple(x.shape)}. Resize the image, or build the model for this size with "
                f"img_size={x.shape[-1]} (position embeddings are resized on load).")
