"""Corpora, their splits and provenance, and calibration / evaluation windows (no downloads)."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import random
import sys
import types
from pathlib import Path

import pytest
import torch

from pipeline.data import (
    SPLITS,
    CorpusText,
    calibration_windows,
    evaluation_ids,
    evaluation_windows,
    hub_unavailable_reason,
    load_corpus,
    resolve_corpus,
    resolve_data_dir,
    tokenize,
    wikitext_rows,
)
from pipeline.data import hub as hub_module
from pipeline.errors import SculptError

REAL_DATA_DIR = os.environ.get("SCULPT_DATA_DIR")  # read before the autouse fixture clears it
WIKI_TEST_SHA256 = "173c87a53759e0201f33e0ccf978e510c2042d7f2cb78229d9a50d79b9e7dd08"
WIKI_VALID_SHA256 = "f0737ed31fc1329026e95cb8b98e19c2a182c39c240ab909dc31abf2f8af58e8"

WIKI_TEST_RAW = " \n = Robert = \n \n Robert is an actor .\n He acted .\n \n = = Career = = \n \n In 2000 he worked .\n"
WIKI_VALID = " \n = Lobster = \n \n The lobster is a <unk> animal .\n \n"
PTB_TEST = " the stock rose \n the market fell <unk> \n"
PTB_TRAIN = " aer banknote berlitz \n pierre vinken N years old \n"


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch):
    """No test sees the developer's data directory or reaches the network."""
    monkeypatch.delenv("SCULPT_DATA_DIR", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def word_tokenizer(*texts: str):
    """A tiny in-memory word-level tokenizer over the words of `texts` (unknown words -> [UNK])."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = sorted({word for text in texts for word in text.split()})
    vocab = {"[UNK]": 0, **{word: index + 1 for index, word in enumerate(words)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]")


def write_jsonl_gz(path: Path, texts: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as file:
        for text in texts:
            file.write(json.dumps({"text": text, "url": "u"}) + "\n")


C4_VALIDATION = [f"valid{i}" for i in range(1101)]
C4_TRAIN = ["tiny doc"] * 5 + [" ".join(f"long{d}w{i}" for i in range(40)) for d in range(3)]


@pytest.fixture
def data_dir(tmp_path) -> Path:
    """A data directory in the documented layout, with tiny hand-made files."""
    files = {
        "wikitext-2-raw/wiki.test.raw": WIKI_TEST_RAW,
        "wikitext-2/valid.txt": WIKI_VALID,
        "ptb/ptb.test.txt": PTB_TEST,
        "ptb/ptb.train.txt": PTB_TRAIN,
    }
    for relative, text in files.items():
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text(text, encoding="utf-8")
    write_jsonl_gz(tmp_path / "c4/c4-validation.00000-of-00008.json.gz", C4_VALIDATION)
    write_jsonl_gz(tmp_path / "c4/c4-train.00000-of-01024.json.gz", C4_TRAIN)
    return tmp_path


# --- named corpora from a data directory ----------------------------------------------------------

def test_wikitext_rows_follow_the_hub_convention(tmp_path):
    path = tmp_path / "wiki.test.raw"
    path.write_text(WIKI_TEST_RAW, encoding="utf-8")
    rows = wikitext_rows(path)
    assert rows[:4] == ["", " = Robert = \n", "", " Robert is an actor .\n"]
    assert len(rows) == WIKI_TEST_RAW.count("\n")


@pytest.mark.parametrize("name, split, relative, expected", [
    ("wikitext2", "evaluation", "wikitext-2-raw/wiki.test.raw",
     "\n\n".join(line + "\n" if line.strip() else "" for line in WIKI_TEST_RAW.split("\n")[:-1])),
    ("wikitext2", "calibration", "wikitext-2/valid.txt", WIKI_VALID),
    ("ptb", "evaluation", "ptb/ptb.test.txt", "the stock rose the market fell <unk>"),
    ("ptb", "calibration", "ptb/ptb.train.txt", "aer banknote berlitz pierre vinken N years old"),
    ("c4", "evaluation", "c4/c4-validation.00000-of-00008.json.gz", " ".join(C4_VALIDATION[:1100])),
    ("c4", "calibration", "c4/c4-train.00000-of-01024.json.gz", "\n\n".join(C4_TRAIN)),
])
def test_named_corpora_read_the_data_dir_layout(data_dir, name, split, relative, expected):
    corpus = load_corpus(name, split, data_dir)
    assert (corpus.name, corpus.split) == (name, split)
    assert corpus.origin == f"data-dir:{data_dir / relative}"
    assert corpus.text == expected
    assert corpus.sha256 == hashlib.sha256(expected.encode()).hexdigest()


def test_data_dir_comes_from_the_environment_when_not_given(data_dir, monkeypatch):
    monkeypatch.setenv("SCULPT_DATA_DIR", str(data_dir))
    assert resolve_data_dir(None) == data_dir.resolve()
    assert load_corpus("ptb", "evaluation").origin.startswith(f"data-dir:{data_dir}")
    other = data_dir / "ptb"
    assert resolve_data_dir(other) == other.resolve()  # an explicit directory wins


@pytest.mark.parametrize("name", ["wikitext2", "ptb", "c4", "pydoc"])
def test_calibration_and_evaluation_are_disjoint(data_dir, name):
    calibration = load_corpus(name, "calibration", data_dir)
    evaluation = load_corpus(name, "evaluation", data_dir)
    assert calibration.origin != evaluation.origin or name == "pydoc"
    shared = {doc for doc in evaluation.documents if doc.strip()} & set(calibration.documents)
    assert not shared
    assert evaluation.text not in calibration.text and calibration.text not in evaluation.text


def test_pydoc_split_covers_every_topic_once_and_is_deterministic():
    from pydoc_data.topics import topics

    calibration, evaluation = (load_corpus("pydoc", split) for split in SPLITS)
    assert sorted(calibration.documents + evaluation.documents) == sorted(topics.values())
    assert calibration.origin.startswith("builtin:pydoc_data")
    assert 0.15 < len(evaluation.text) / (len(evaluation.text) + len(calibration.text)) < 0.35
    assert load_corpus("pydoc", "evaluation").sha256 == evaluation.sha256


def test_c4_evaluation_keeps_256_windows_of_tokens(data_dir):
    corpus = load_corpus("c4", "evaluation", data_dir)
    tokenizer = word_tokenizer(corpus.text)
    assert evaluation_ids(tokenizer, corpus, seq_len=2).numel() == 512
    assert evaluation_ids(tokenizer, corpus, seq_len=1000).numel() == 1100  # fewer tokens than the cap


# --- user files ---------------------------------------------------------------------------------

def test_user_txt_file_splits_ninety_ten_at_a_line_boundary(tmp_path):
    lines = [f"line {i:02d} " + "word " * 5 + "\n" for i in range(20)]
    path = tmp_path / "notes.txt"
    path.write_text("".join(lines), encoding="utf-8")
    calibration = load_corpus(str(path), "calibration")
    evaluation = load_corpus(str(path), "evaluation")
    assert calibration.name == evaluation.name == str(path.resolve())
    assert calibration.origin == f"file:{path.resolve()}"
    assert calibration.text + evaluation.text == "".join(lines)
    assert calibration.text == "".join(lines[:18])  # 90% of equal lines
    assert not set(calibration.documents) & set(evaluation.documents)


def test_user_jsonl_file_splits_by_document(tmp_path):
    texts = [f"document {i} body" for i in range(10)]
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": text, "id": i}) + "\n" for i, text in enumerate(texts)))
    calibration = load_corpus(str(path), "calibration")
    evaluation = load_corpus(str(path), "evaluation")
    assert list(calibration.documents + evaluation.documents) == texts
    assert len(evaluation.documents) == 1
    assert not set(calibration.documents) & set(evaluation.documents)


@pytest.mark.parametrize("content, line", [
    ('{"text": "fine"}\n{"text": broken\n', 2),
    ('{"text": "fine"}\n\n{"body": "no text field"}\n', 3),
    ('["not", "an", "object"]\n{"text": "fine"}\n', 1),
])
def test_malformed_jsonl_names_the_line(tmp_path, content, line):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(SculptError, match=rf"line {line} .*\{{\"text\""):
        load_corpus(str(path), "calibration")


def test_user_file_errors_say_what_to_do(tmp_path):
    with pytest.raises(SculptError, match=r"does not exist: pass an existing \.txt or \.jsonl file"):
        load_corpus(str(tmp_path / "missing.txt"), "calibration")
    single = tmp_path / "one.txt"
    single.write_text("just one line\n")
    with pytest.raises(SculptError, match="needs at least 2: add more text"):
        load_corpus(str(single), "evaluation")


# --- errors and resolution ---------------------------------------------------------------------

def test_unknown_corpus_lists_the_valid_names_and_file_forms():
    with pytest.raises(SculptError) as raised:
        load_corpus("wikitext3", "evaluation")
    message = str(raised.value)
    for expected in ("wikitext2", "ptb", "c4", "pydoc", "auto", ".txt", ".jsonl"):
        assert expected in message


def test_unknown_split_is_an_error():
    with pytest.raises(SculptError, match="'calibration' or 'evaluation'"):
        load_corpus("pydoc", "test")


def test_missing_data_dir_is_an_error(tmp_path, monkeypatch):
    with pytest.raises(SculptError, match=r"does not exist: pass an existing directory"):
        load_corpus("wikitext2", "evaluation", tmp_path / "nowhere")
    monkeypatch.setenv("SCULPT_DATA_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(SculptError, match="from SCULPT_DATA_DIR"):
        resolve_data_dir(None)


def test_missing_corpus_file_names_the_expected_path_and_both_fixes(data_dir):
    (data_dir / "ptb/ptb.test.txt").unlink()
    with pytest.raises(SculptError) as raised:
        load_corpus("ptb", "evaluation", data_dir)
    message = str(raised.value)
    assert str(data_dir / "ptb/ptb.test.txt") in message
    assert "--data-dir" in message and "SCULPT_DATA_DIR" in message and "llm-sculpt[hub]" in message
    assert "HF_HUB_OFFLINE is set" in message


def test_no_data_dir_and_offline_hub_fails_fast_with_both_fixes():
    with pytest.raises(SculptError, match=r"no data directory was given.*DIR/wikitext-2-raw/wiki\.test\.raw.*"
                                          r"llm-sculpt\[hub\]"):
        load_corpus("wikitext2", "evaluation")


@pytest.mark.parametrize("variable", ["HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"])
def test_offline_switches_disable_the_hub(monkeypatch, variable):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv(variable, "true")
    assert hub_unavailable_reason() == f"{variable} is set"


def test_auto_resolves_to_pydoc_offline_without_a_data_dir(tmp_path):
    assert resolve_corpus("auto") == "pydoc"
    corpus = load_corpus("auto", "calibration", tmp_path)  # a directory without WikiText
    assert corpus.name == "pydoc" and corpus.origin.startswith("builtin:")


def test_auto_resolves_to_wikitext2_given_a_data_dir_with_it(data_dir):
    assert resolve_corpus("auto", data_dir) == "wikitext2"
    assert load_corpus("auto", "evaluation", data_dir).name == "wikitext2"


# --- the hub path, with a stand-in `datasets` ---------------------------------------------------

class FakeDataset:
    def __init__(self, rows: dict[str, list[str]]):
        self.rows = rows

    def __len__(self):
        return len(next(iter(self.rows.values())))

    def select(self, indices):
        return FakeDataset({key: [values[i] for i in indices] for key, values in self.rows.items()})

    def __getitem__(self, field):
        return self.rows[field]


@pytest.fixture
def fake_hub(monkeypatch):
    """A reachable hub whose `load_dataset` serves the hand-made WikiText rows (or raises)."""
    calls = []
    hub_rows = {
        ("wikitext", "wikitext-2-raw-v1", "test"): [line + "\n" if line.strip() else ""
                                                   for line in WIKI_TEST_RAW.split("\n")[:-1]],
        ("wikitext", "wikitext-2-v1", "validation"): [line + "\n" if line.strip() else ""
                                                     for line in WIKI_VALID.split("\n")[:-1]],
    }

    def load_dataset(path, name=None, split=None, data_files=None):
        calls.append((path, name, split, data_files))
        if (path, name, split) not in hub_rows:
            raise ConnectionError("Couldn't reach the Hub")
        return FakeDataset({"text": hub_rows[(path, name, split)]})

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    monkeypatch.setattr(hub_module, "hub_unavailable_reason", lambda: None)
    return calls


def test_hub_rows_give_the_same_text_as_the_data_dir(fake_hub, data_dir):
    for split in SPLITS:
        from_hub = load_corpus("wikitext2", split)
        from_dir = load_corpus("wikitext2", split, data_dir)
        assert from_hub.text == from_dir.text
        assert from_hub.sha256 == from_dir.sha256
    assert load_corpus("wikitext2", "evaluation").origin == "hub:wikitext/wikitext-2-raw-v1:test"


def test_hub_failure_is_a_sculpt_error_with_both_fixes(fake_hub):
    with pytest.raises(SculptError, match=r"ConnectionError.*--data-dir.*DIR/ptb/ptb\.train\.txt.*llm-sculpt\[hub\]"):
        load_corpus("ptb", "calibration")
    assert fake_hub == [("ptb_text_only", "penn_treebank", "train", None)]


# --- windows ---------------------------------------------------------------------------------

UNIQUE_TEXT = " ".join(f"w{i}" for i in range(200))


def windows_lie_inside(windows: torch.Tensor, ids: torch.Tensor) -> bool:
    """Every row of `windows` is a contiguous run of `ids`."""
    runs = {tuple(run) for run in ids.unfold(0, windows.shape[1], 1).tolist()}
    return all(tuple(row) in runs for row in windows.tolist())


def test_calibration_windows_are_seeded_and_inside_the_text():
    corpus = CorpusText.from_text("unique", "calibration", "test", UNIQUE_TEXT)
    tokenizer = word_tokenizer(UNIQUE_TEXT)
    first = calibration_windows(tokenizer, corpus, n=8, length=16, seed=0)
    assert first.shape == (8, 16) and first.dtype == torch.long
    assert torch.equal(first, calibration_windows(tokenizer, corpus, n=8, length=16, seed=0))
    assert not torch.equal(first, calibration_windows(tokenizer, corpus, n=8, length=16, seed=1))
    assert windows_lie_inside(first, tokenize(tokenizer, UNIQUE_TEXT))
    whole = calibration_windows(tokenizer, corpus, n=3, length=200, seed=5)  # the window may span the text
    assert torch.equal(whole, tokenize(tokenizer, UNIQUE_TEXT).expand(3, -1))


def test_c4_calibration_samples_long_documents_first(data_dir):
    corpus = load_corpus("c4", "calibration", data_dir)
    tokenizer = word_tokenizer(*C4_TRAIN)
    windows = calibration_windows(tokenizer, corpus, n=6, length=12, seed=0)
    assert windows.shape == (6, 12)
    assert torch.equal(windows, calibration_windows(tokenizer, corpus, n=6, length=12, seed=0))
    long_documents = [tokenize(tokenizer, doc) for doc in C4_TRAIN if len(doc.split()) > 12]
    for window in windows:
        assert any(windows_lie_inside(window[None], ids) for ids in long_documents)
    with pytest.raises(SculptError, match="lower the calibration length"):
        calibration_windows(tokenizer, corpus, n=1, length=40, seed=0)


def test_too_short_text_says_how_many_tokens_it_has():
    corpus = CorpusText.from_text("short", "calibration", "test", "only five words in here")
    with pytest.raises(SculptError, match=r"has 5 tokens, fewer than the calibration window length 8: "
                                          r"lower the calibration length to at most 5"):
        calibration_windows(word_tokenizer(corpus.text), corpus, n=2, length=8, seed=0)


def test_evaluation_windows_are_non_overlapping_and_drop_the_tail():
    ids = torch.arange(23)
    windows = evaluation_windows(ids, seq_len=5)
    assert torch.equal(windows.flatten(), torch.arange(20))
    assert evaluation_windows(ids, seq_len=5, max_windows=2).shape == (2, 5)
    with pytest.raises(SculptError, match="fewer than one window of 30: lower the sequence length"):
        evaluation_windows(ids, seq_len=30)


# --- the real WikiText-2 files, when SCULPT_DATA_DIR points at them ------------------------------

real_data = pytest.mark.skipif(not REAL_DATA_DIR,
                               reason="SCULPT_DATA_DIR is not set: the real WikiText-2 checks need it")


@real_data
def test_real_wikitext2_matches_the_readme():
    directory = Path(REAL_DATA_DIR)
    raw = (directory / "wikitext-2-raw/wiki.test.raw").read_bytes()
    assert hashlib.sha256(raw).hexdigest() == WIKI_TEST_SHA256
    assert len(wikitext_rows(directory / "wikitext-2-raw/wiki.test.raw")) == 4358
    evaluation = load_corpus("wikitext2", "evaluation", directory)
    assert len(evaluation.documents) == 4358
    assert load_corpus("wikitext2", "calibration", directory).sha256 == WIKI_VALID_SHA256


@real_data
def test_real_wikitext2_evaluation_text_is_not_in_calibration():
    evaluation = load_corpus("wikitext2", "evaluation", REAL_DATA_DIR).text
    calibration = load_corpus("wikitext2", "calibration", REAL_DATA_DIR).text
    rng = random.Random(0)
    samples = [evaluation[start: start + 200] for start in rng.sample(range(len(evaluation) - 200), 25)]
    assert not [sample for sample in samples if sample in calibration]
