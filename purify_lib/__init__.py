"""purify_lib: the thin library under purify's notebooks (see DESIGN.md for the shape)."""
from .errors import PurifyError

__version__ = "0.1.0"
__all__ = ["PurifyError", "__version__"]
