"""Named corpora with the pruning papers' exact preprocessing, each in two disjoint splits.

`calibration` feeds calibration and search; `evaluation` feeds the reported perplexity.
Never calibrate on evaluation text. A corpus comes from a data directory (an explicit
argument, else SCULPT_DATA_DIR) when it holds the corpus's file, else from the hub.

- wikitext2: evaluation = WikiText-2 raw test rows joined with "\\n\\n" (SparseGPT/Wanda/FLAP/
  SliceGPT); calibration = WikiText-2 (v1) validation, the text of `wikitext-2/valid.txt`.
- ptb: `ptb_text_only` sentences joined with a single space (test / train).
- c4: evaluation = the first 1100 documents of validation shard 0 joined with ' ' (capped at
  256 windows when tokenised); calibration = training shard 0, sampled document first.
- pydoc: CPython's help topics (`pydoc_data`), built in: no hub, no data directory. With the
  SmolLM2 tokenizer on CPython 3.11: ~113k tokens, ~86k calibration and ~27k evaluation.
- a user file `*.txt` (plain text) or `*.jsonl` ("text" field): first 90% calibration, rest evaluation.
- auto: wikitext2 when a data directory or the hub provides it, else pydoc.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import platform
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from ..errors import SculptError
from .hub import HubUnavailable, hub_origin, hub_unavailable_reason, load_hub_column

DATA_DIR_ENV = "SCULPT_DATA_DIR"
SPLITS = ("calibration", "evaluation")
FILE_SUFFIXES = (".txt", ".jsonl")
USER_CALIBRATION_SHARE = 0.9
PYDOC_EVALUATION_SHARE = 0.2


@dataclass(frozen=True)
class CorpusText:
    """One split of a corpus: its documents, how they join into the text, and where they came from."""

    name: str  # what `load_corpus` resolved: 'wikitext2', 'pydoc', or a user file's absolute path
    split: str  # 'calibration' or 'evaluation'
    origin: str  # 'data-dir:/abs/file', 'hub:wikitext/wikitext-2-raw-v1:test', 'builtin:…', 'file:/abs/file'
    documents: tuple[str, ...] = field(repr=False)
    separator: str = ""
    by_document: bool = False  # calibration samples a document, then a window inside it (c4)
    eval_windows_cap: int | None = None  # evaluation keeps the first cap × seq_len tokens (c4: 256)

    @classmethod
    def from_text(cls, name: str, split: str, origin: str, text: str) -> CorpusText:
        return cls(name, split, origin, (text,))

    @cached_property
    def text(self) -> str:
        return self.separator.join(self.documents)

    @cached_property
    def sha256(self) -> str:
        """sha256 of the UTF-8 text, computed document by document (a c4 shard is never joined)."""
        digest, separator = hashlib.sha256(), self.separator.encode()
        for index, document in enumerate(self.documents):
            if index:
                digest.update(separator)
            digest.update(document.encode())
        return digest.hexdigest()

    def provenance(self) -> dict:
        """What the manifest records about the text a stage used."""
        return {"corpus": self.name, "split": self.split, "origin": self.origin, "sha256": self.sha256,
                "documents": len(self.documents)}


@dataclass(frozen=True)
class _Source:
    """Where one split of a named corpus lives, and how its lines or hub rows become documents."""

    file: str  # relative to the data directory
    read: Callable[[Path], list[str]]  # data-dir file -> documents
    hub_path: str
    hub_name: str | None
    hub_split: str
    hub_field: str
    hub_files: dict | None = None
    from_rows: Callable[[Sequence[str]], list[str]] = list  # hub rows -> documents
    separator: str = ""
    limit: int | None = None  # keep only the first N documents
    by_document: bool = False
    eval_windows_cap: int | None = None


def _lines(path: Path) -> list[str]:
    """The file's lines, each keeping its "\\n", split as the hub's loaders iterate a file."""
    text = _read_utf8(path)
    parts = text.split("\n")
    return [part + "\n" for part in parts[:-1]] + ([parts[-1]] if parts[-1] else [])


def _read_utf8(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise SculptError(f"{path} is not UTF-8 text ({error.reason} at byte {error.start}): "
                          "convert it to UTF-8") from None


def wikitext_rows(path: Path) -> list[str]:
    """The hub's WikiText rows from a raw file: lines keep "\\n"; whitespace-only lines become ""."""
    return [line if line.strip() else "" for line in _lines(path)]


def _wikitext_file_lines(rows: Sequence[str]) -> list[str]:
    # the inverse of wikitext_rows: the original files write a blank line as " \n"
    return [row if row else " \n" for row in rows]


def _ptb_sentences(path: Path) -> list[str]:
    return [line.strip() for line in _lines(path)]  # as `ptb_text_only` yields them


def jsonl_texts(lines: Iterable[str], where: str, limit: int | None = None) -> list[str]:
    """The "text" field of each JSON line (blank lines skipped); SculptError naming a bad line."""
    texts: list[str] = []
    for number, line in enumerate(lines, 1):
        if limit is not None and len(texts) >= limit:
            break
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise SculptError(f"{where} line {number} is not valid JSON ({error.msg}): "
                              'write one JSON object per line, e.g. {"text": "..."}') from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise SculptError(f'{where} line {number} has no "text" string field: '
                              'write one JSON object per line, e.g. {"text": "..."}')
        texts.append(record["text"])
    return texts


def _c4_documents(limit: int | None) -> Callable[[Path], list[str]]:
    def read(path: Path) -> list[str]:
        with gzip.open(path, "rt", encoding="utf-8") as lines:
            return jsonl_texts(lines, str(path), limit)
    return read


_C4_VALIDATION = "c4-validation.00000-of-00008.json.gz"
_C4_TRAIN = "c4-train.00000-of-01024.json.gz"

CORPORA: dict[str, dict[str, _Source]] = {
    "wikitext2": {
        "evaluation": _Source("wikitext-2-raw/wiki.test.raw", wikitext_rows, "wikitext", "wikitext-2-raw-v1",
                              "test", "text", separator="\n\n"),
        "calibration": _Source("wikitext-2/valid.txt", _lines, "wikitext", "wikitext-2-v1", "validation", "text",
                               from_rows=_wikitext_file_lines),
    },
    "ptb": {
        "evaluation": _Source("ptb/ptb.test.txt", _ptb_sentences, "ptb_text_only", "penn_treebank", "test",
                              "sentence", separator=" "),
        "calibration": _Source("ptb/ptb.train.txt", _ptb_sentences, "ptb_text_only", "penn_treebank", "train",
                               "sentence", separator=" "),
    },
    "c4": {
        "evaluation": _Source(f"c4/{_C4_VALIDATION}", _c4_documents(1100), "allenai/c4", None, "validation",
                              "text", hub_files={"validation": f"en/{_C4_VALIDATION}"}, separator=" ",
                              limit=1100, eval_windows_cap=256),
        "calibration": _Source(f"c4/{_C4_TRAIN}", _c4_documents(None), "allenai/c4", None, "train", "text",
                               hub_files={"train": f"en/{_C4_TRAIN}"}, separator="\n\n", by_document=True),
    },
}
CORPUS_NAMES = (*CORPORA, "pydoc", "auto")


def resolve_data_dir(explicit: str | Path | None = None) -> Path | None:
    """The data directory: the explicit argument, else SCULPT_DATA_DIR, else None."""
    raw, source = explicit, "--data-dir"
    if raw is None or raw == "":
        raw, source = os.environ.get(DATA_DIR_ENV), DATA_DIR_ENV
    if not raw:
        return None
    path = Path(raw).expanduser().resolve()
    if not path.is_dir():
        raise SculptError(f"data directory {path} (from {source}) does not exist: pass an existing directory "
                          f"with --data-dir, or unset {DATA_DIR_ENV} to use the hub or the built-in corpus 'pydoc'")
    return path


def _is_user_file(name: str) -> bool:
    return name.lower().endswith(FILE_SUFFIXES)


def resolve_corpus(name: str, data_dir: Path | None = None) -> str:
    """The corpus a name stands for: 'auto' picks one, a file becomes its absolute path."""
    if _is_user_file(name):
        return str(Path(name).expanduser().resolve())
    if name == "auto":
        sources = CORPORA["wikitext2"].values()
        if data_dir is not None and all((data_dir / source.file).is_file() for source in sources):
            return "wikitext2"
        return "wikitext2" if hub_unavailable_reason() is None else "pydoc"
    if name not in CORPUS_NAMES:
        raise SculptError(f"unknown corpus {name!r}: use one of {', '.join(CORPUS_NAMES)}, "
                          "or a path to a .txt file (plain text) or a .jsonl file (one {\"text\": ...} per line)")
    return name


def load_corpus(name: str, split: str, data_dir: str | Path | None = None) -> CorpusText:
    """One split ('calibration' or 'evaluation') of a named corpus or a user file."""
    if split not in SPLITS:
        raise SculptError(f"unknown split {split!r}: use 'calibration' or 'evaluation'")
    directory = resolve_data_dir(data_dir)
    name = resolve_corpus(name, directory)
    if _is_user_file(name):
        return _load_user_file(Path(name), split)
    if name == "pydoc":
        return _load_pydoc(split)
    return _load_named(name, split, directory)


def _load_named(name: str, split: str, data_dir: Path | None) -> CorpusText:
    source = CORPORA[name][split]
    path = data_dir / source.file if data_dir is not None else None
    if path is not None and path.is_file():
        documents, origin = source.read(path), f"data-dir:{path}"
    else:
        try:
            rows = load_hub_column(source.hub_path, source.hub_name, source.hub_split, source.hub_field,
                                   source.hub_files, source.limit)
        except HubUnavailable as error:
            missing = f"{path} does not exist" if path is not None else "no data directory was given"
            raise SculptError(
                f"corpus {name!r} ({split}) needs a data directory or the Hugging Face hub: {missing} and the "
                f"hub is not usable ({error}); fix: pass --data-dir DIR or set {DATA_DIR_ENV} (expected "
                f"DIR/{source.file}), or pip install 'llm-sculpt[hub]' and go online "
                "(unset HF_HUB_OFFLINE / HF_DATASETS_OFFLINE)") from None
        documents = source.from_rows(rows)
        origin = hub_origin(source.hub_path, source.hub_name, source.hub_split, source.hub_files)
    return CorpusText(name, split, origin, tuple(documents), source.separator, source.by_document,
                      source.eval_windows_cap)


def split_pydoc_topics(topics: dict[str, str]) -> dict[str, list[str]]:
    """Topic names per split: in sorted order, a topic goes to evaluation while evaluation
    holds under a fifth of the text seen so far (topics range from 100 to 60k characters)."""
    splits: dict[str, list[str]] = {"calibration": [], "evaluation": []}
    seen = evaluation = 0
    for topic in sorted(topics):
        seen += len(topics[topic])
        if evaluation < PYDOC_EVALUATION_SHARE * seen:
            evaluation += len(topics[topic])
            splits["evaluation"].append(topic)
        else:
            splits["calibration"].append(topic)
    return splits


def _load_pydoc(split: str) -> CorpusText:
    try:
        from pydoc_data.topics import topics
    except ImportError:
        raise SculptError("corpus 'pydoc' needs CPython's pydoc_data module, which this Python lacks: "
                          "install the full standard library, or use --data-dir with wikitext2") from None
    documents = tuple(topics[topic] for topic in split_pydoc_topics(topics)[split])
    return CorpusText("pydoc", split, f"builtin:pydoc_data:python-{platform.python_version()}", documents, "\n\n")


def user_file_cut(sizes: Sequence[int], share: float = USER_CALIBRATION_SHARE) -> int:
    """How many leading units (lines or documents) make the calibration part: the first
    boundary at or past `share` of the characters, leaving at least one unit for evaluation."""
    total, running = sum(sizes), 0
    for index, size in enumerate(sizes[:-1], 1):
        running += size
        if running >= share * total:
            return index
    return max(len(sizes) - 1, 1)


def _load_user_file(path: Path, split: str) -> CorpusText:
    if not path.is_file():
        raise SculptError(f"corpus file {path} does not exist: pass an existing .txt or .jsonl file, "
                          f"or a named corpus ({', '.join(CORPUS_NAMES)})")
    if path.suffix.lower() == ".txt":
        units, separator, kind = _lines(path), "", "lines"
    else:
        units, separator, kind = jsonl_texts(_read_utf8(path).split("\n"), str(path)), "\n\n", "documents"
    if len(units) < 2:
        raise SculptError(f"corpus file {path} has {len(units)} {kind}; splitting it into calibration (the first "
                          f"90%) and evaluation (the rest) needs at least 2: add more text")
    cut = user_file_cut([len(unit) for unit in units])
    documents = units[:cut] if split == "calibration" else units[cut:]
    return CorpusText(str(path), split, f"file:{path}", tuple(documents), separator)
