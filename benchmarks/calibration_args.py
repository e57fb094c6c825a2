"""The model and calibration-window arguments the held-out ranking scripts share
(reform_holdout.py), and loading what they name."""

from __future__ import annotations

import argparse

from pipeline.data import calibration_windows, load_corpus
from pipeline.models.loading import load_model


def add_calibration_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("specs", nargs="+", help="arch.json files")
    parser.add_argument("--model", default="default")
    parser.add_argument("--data-dir", default=None, help="corpora directory (else $SCULPT_DATA_DIR)")
    parser.add_argument("--calib-corpus", default="auto")
    parser.add_argument("--calib-samples", type=int, default=32)
    parser.add_argument("--calib-seqlen", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)


def load_calibration(args: argparse.Namespace):
    """(the loaded model, the calibration corpus, its seeded windows) as the pipeline draws them."""
    loaded = load_model(args.model)
    corpus = load_corpus(args.calib_corpus, "calibration", args.data_dir)
    windows = calibration_windows(loaded.tokenizer, corpus, args.calib_samples, args.calib_seqlen, args.seed)
    return loaded, corpus, windows
