"""Compression algorithms: tensor math on a model and calibration windows; no file I/O.

    calibration/  feed calibration windows through a model layer by layer; statistics and similarity
    importance/   which heads and channels matter: the paper's OBS importance, baseline scores, greedy
                  reform-aware channel ranking, GOA's output approximation, reform-aware width costs
    reform/       correct the kept weights of pruned output projections (least squares, ADMM, bias)
    width/        methods that cut heads and channels: uniform, magnitude, wanda-sp, flap, goa
    depth/        methods that remove layers and sublayers: shortgpt, sleb, streamline, attn-drop,
                  attn-skip-last
    search/       the evolutionary architecture search (the `evolution` method)

Importing this package registers every method in `METHODS` (registry.py).
"""

from .depth import attention_removal, block_removal, streamline  # noqa: F401  (register depth and sublayer methods)
from .registry import METHODS, Method, MethodContext, MethodResult, get_method, parse_options
from .search import evolution  # noqa: F401  (registers the search)
from .width import goa, uniform, width_baselines  # noqa: F401  (register uniform, goa, magnitude, wanda-sp, flap)

__all__ = ["METHODS", "Method", "MethodContext", "MethodResult", "get_method", "parse_options"]
