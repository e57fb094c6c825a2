"""Corpora, calibration sampling and evaluation windows.

`load_corpus(name, split, data_dir)` gives one split of a corpus as a `CorpusText` with its
provenance; `calibration_windows` and `evaluation_ids` / `evaluation_windows` turn it into
token ids. See `corpora` for the corpora and their preprocessing.
"""

from .corpora import (
    CORPUS_NAMES,
    DATA_DIR_ENV,
    SPLITS,
    CorpusText,
    load_corpus,
    resolve_corpus,
    resolve_data_dir,
    split_pydoc_topics,
    wikitext_rows,
)
from .hub import hub_unavailable_reason
from .sampling import calibration_windows, evaluation_ids, evaluation_windows, sample_windows, tokenize

__all__ = [
    "CORPUS_NAMES",
    "DATA_DIR_ENV",
    "SPLITS",
    "CorpusText",
    "calibration_windows",
    "evaluation_ids",
    "evaluation_windows",
    "hub_unavailable_reason",
    "load_corpus",
    "resolve_corpus",
    "resolve_data_dir",
    "sample_windows",
    "split_pydoc_topics",
    "tokenize",
    "wikitext_rows",
]
