"""edgevit.converters (installed from the top-level `converters/` folder)."""
