"""edgevit.quantization (installed from the top-level `quantization/` folder)."""
