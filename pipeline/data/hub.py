"""Hugging Face hub datasets, reached lazily and never left to hang.

`datasets` is the optional extra `llm-sculpt[hub]`: it is imported only when a corpus
is not provided by a data directory. Before any download the offline switches are
honoured and the hub host is probed with a short timeout, because `load_dataset`
otherwise retries an unreachable host for half a minute.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import socket
from collections.abc import Sequence
from urllib.parse import urlparse

from ..errors import SculptError

OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
PROBE_TIMEOUT_S = 3.0
_PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")


class HubUnavailable(SculptError):
    """The hub cannot be used here; the caller adds the fix that fits its context."""


def hub_unavailable_reason() -> str | None:
    """Why the hub cannot be used now (offline switch, no `datasets`, host unreachable), or None."""
    for var in OFFLINE_VARS:
        if os.environ.get(var, "").strip().lower() in {"1", "true", "yes", "on"}:
            return f"{var} is set"
    if importlib.util.find_spec("datasets") is None:
        return "the 'datasets' package is not installed"
    if any(os.environ.get(var) for var in _PROXY_VARS):
        return None  # a direct probe says nothing about a proxied route; let datasets try
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    return _probe(url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443))


@functools.lru_cache(maxsize=None)
def _probe(host: str, port: int) -> str | None:
    try:
        socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S).close()
    except OSError as error:
        return f"{host}:{port} is unreachable ({error})"
    return None


def hub_origin(path: str, name: str | None, split: str, data_files: dict | None = None) -> str:
    """The provenance string of a hub split, e.g. 'hub:wikitext/wikitext-2-raw-v1:test'."""
    source = path + (f"/{name}" if name else "")
    if data_files:
        source += ":" + ",".join(str(files) for files in data_files.values())
    return f"hub:{source}:{split}"


def load_hub_column(path: str, name: str | None, split: str, field: str, data_files: dict | None = None,
                    limit: int | None = None) -> Sequence[str]:
    """One text column of a hub dataset split (its first `limit` rows); HubUnavailable when it cannot be had."""
    reason = hub_unavailable_reason()
    if reason:
        raise HubUnavailable(reason)
    import datasets

    try:
        dataset = datasets.load_dataset(path, name, split=split, data_files=data_files)
    except Exception as error:  # connection, auth, missing-script and cache errors all come through here
        raise HubUnavailable(f"loading {hub_origin(path, name, split, data_files)} failed: "
                             f"{type(error).__name__}: {error}".replace("\n", " ")) from error
    if limit is not None:
        dataset = dataset.select(range(min(limit, len(dataset))))
    return list(dataset[field])
