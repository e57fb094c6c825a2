"""Compression algorithms: importance, selection, methods. Tensor math; no file I/O.

Importing this package registers every method in `METHODS`.
"""

from . import uniform  # noqa: F401  (registers the method)
from . import evolution_method  # noqa: F401  (registers the method)
from . import goa, width_baselines  # noqa: F401  (register goa, magnitude, wanda-sp, flap)
from . import attention_drop, layer_removal, streamline  # noqa: F401  (register depth and sublayer methods)
from .registry import METHODS, Method, MethodContext, MethodResult, get_method, parse_options

__all__ = ["METHODS", "Method", "MethodContext", "MethodResult", "get_method", "parse_options"]
