"""What every stage gets: the artifact, the recipe, and lazily loaded shared inputs."""

from __future__ import annotations

import contextlib
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..artifacts import Artifact
from ..data import calibration_windows, load_corpus, resolve_data_dir
from ..errors import SculptError
from ..models.lazy_weights import STREAM_ENV, is_streamed, stream_source
from ..models.loading import DTYPES, LoadedModel, load_model
from ..recipe import Recipe


@dataclass
class StageContext:
    artifact: Artifact
    recipe: Recipe
    progress: bool = True
    _source: LoadedModel | None = field(default=None, repr=False)
    _calibration: dict[tuple[int, int], tuple[torch.Tensor, dict[str, Any]]] = field(default_factory=dict, repr=False)

    def say(self, message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    @property
    def data_dir(self) -> Path | None:
        return resolve_data_dir(self.recipe.data.data_dir)

    def source(self) -> LoadedModel:
        """The dense source model (loaded once per run).

        A safetensors checkpoint bigger than a quarter of this machine's memory comes as a streamed skeleton
        (models/lazy_weights.py: weights on the meta device, read layer by layer; `is_streamed(model)` tells).
        Search (uniform, proportional split), reform, slice, export and validate stream it or never read it; what
        still needs the whole source asks for it through `whole_source` (docs/scale.md)."""
        if self._source is None:
            section = self.recipe.model
            self._source = load_model(section.source, dtype=section.dtype, device=section.device)
        return self._source

    def whole_source(self, stage: str, what: str) -> LoadedModel:
        """The source for what must run or trace the whole dense model (`what`, e.g. "exports the whole dense
        source (export.include_source)"): a streamed skeleton stops it with one line."""
        loaded = self.source()
        if is_streamed(loaded.model):
            raise SculptError(
                f"the {stage} stage {what}, and {self.recipe.model.source or 'the model'} is streamed from disk "
                f"(bigger than a quarter of this machine's memory, docs/scale.md): turn that off, run {stage} on a "
                f"machine that holds the model, or load it whole with {STREAM_ENV}=never")
        return loaded

    def calibration(self, samples: int | None = None,
                    seqlen: int | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
        """Seeded calibration windows [n, L] from the calibration split, and their provenance.

        n and L are the data section's unless a stage asks for its own (e.g. reform.samples).
        """
        data = self.recipe.data
        shape = (samples or data.calib_samples, seqlen or data.calib_seqlen)
        if shape not in self._calibration:
            corpus = load_corpus(data.calibration, "calibration", self.data_dir)
            windows = calibration_windows(self.source().tokenizer, corpus, *shape, self.recipe.seed)
            provenance = {**corpus.provenance(), "samples": shape[0], "seqlen": shape[1], "seed": self.recipe.seed}
            self._calibration[shape] = (windows, provenance)
        return self._calibration[shape]

    def calibration_options(self, samples: int | None = None, seqlen: int | None = None) -> dict[str, Any]:
        """What the calibration data depends on, for a stage's recorded options (resume checks)."""
        data = self.recipe.data
        corpus = load_corpus(data.calibration, "calibration", self.data_dir)
        return {"corpus": corpus.name, "sha256": corpus.sha256, "samples": samples or data.calib_samples,
                "seqlen": seqlen or data.calib_seqlen, "seed": self.recipe.seed}

    def model_options(self) -> dict[str, Any]:
        source = self.artifact.manifest.source
        return {"source": self.recipe.model.source, "sha256": source.sha256, "revision": source.revision,
                "dtype": self.recipe.model.dtype}

    def resume_dir(self, stage: str) -> Path:
        """A directory that survives an interrupted stage, for its checkpoints (see `drop_resume_dir`)."""
        path = self.artifact.path / RESUME_DIR / stage
        path.mkdir(parents=True, exist_ok=True)
        return path

    def drop_resume_dir(self, stage: str) -> None:
        """Remove a stage's checkpoints once its result is recorded."""
        shutil.rmtree(self.artifact.path / RESUME_DIR / stage, ignore_errors=True)
        with contextlib.suppress(OSError):
            (self.artifact.path / RESUME_DIR).rmdir()  # only when no other stage keeps checkpoints


RESUME_DIR = ".resume"


def whole_model_problem(checkpoint: Path, dtype: str) -> str | None:
    """Why the sliced checkpoint in `checkpoint` should not be held whole beside a second copy (an ONNX Runtime
    session, another backend), or None: the rule that streams a source (its weights in `dtype` take more than a
    quarter of this machine's memory, or SCULPT_STREAM_WEIGHTS=always). Export and validate then hold one model
    at a time, and leave ONNX Runtime out: on a CPU it holds about twice an fp16 graph's weights."""
    if not stream_source(Path(checkpoint), DTYPES[dtype]):
        return None
    return (f"the sliced model is too big to hold twice here (over a quarter of memory in {dtype}, or "
            f"{STREAM_ENV}=always), and ONNX Runtime on a CPU holds about twice an fp16 graph's weights")
