"""A least-recently-used cache of tensors bounded by their total size in bytes."""

from __future__ import annotations

from collections import OrderedDict
from typing import Hashable

import torch


class TensorLRU:
    """Tensors by key; the least recently used are evicted beyond `max_bytes` (one larger than that is not kept)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes, self.bytes = max_bytes, 0
        self.entries: OrderedDict[Hashable, torch.Tensor] = OrderedDict()

    def get(self, key: Hashable) -> torch.Tensor | None:
        if key in self.entries:
            self.entries.move_to_end(key)
            return self.entries[key]
        return None

    def put(self, key: Hashable, value: torch.Tensor) -> None:
        if key in self.entries or _size(value) > self.max_bytes:
            return
        self.entries[key] = value
        self.bytes += _size(value)
        while self.bytes > self.max_bytes:
            _, old = self.entries.popitem(last=False)
            self.bytes -= _size(old)


def _size(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()
