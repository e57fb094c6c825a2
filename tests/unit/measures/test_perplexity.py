"""Perplexity follows the papers' protocol on any runner, and the torch runner's contract."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pipeline.errors import SculptError
from tests.factories import tiny_model
from pipeline.measures.perplexity import PerplexityResult, perplexity, summed_nll
from pipeline.measures.runners import Runner, TorchRunner

VOCAB = 128  # the tiny models' vocabulary (tests/factories.py)


class UniformRunner:
    """Every token equally likely; records the windows it is asked to score."""

    name = "uniform"

    def __init__(self) -> None:
        self.seen: list[torch.Tensor] = []

    def logits(self, input_ids: torch.LongTensor) -> torch.Tensor:
        self.seen.append(input_ids.clone())
        return torch.zeros(*input_ids.shape, VOCAB)


def random_ids(count: int, seed: int = 0) -> torch.LongTensor:
    return torch.randint(0, VOCAB, (count,), generator=torch.Generator().manual_seed(seed))


def test_perplexity_equals_exp_of_cross_entropy_on_a_tiny_model():
    model = tiny_model("llama")
    ids, seq_len = random_ids(3 * 16 + 5), 16
    windows = ids[: 3 * seq_len].view(3, seq_len)
    with torch.no_grad():
        logits = model(input_ids=windows).logits
    expected = F.cross_entropy(logits[:, :-1].reshape(-1, VOCAB).double(), windows[:, 1:].reshape(-1))
    for batch_size in (1, 2, 3):
        result = perplexity(TorchRunner(model), ids, seq_len, batch_size=batch_size, progress=False)
        assert result.nll == pytest.approx(expected.item(), rel=1e-5)
        assert result.ppl == pytest.approx(math.exp(expected.item()), rel=1e-5)
        assert (result.windows, result.tokens, result.seq_len) == (3, 3 * 15, 16)


def test_uniform_logits_give_the_vocabulary_size():
    result = perplexity(UniformRunner(), random_ids(100), seq_len=10, progress=False)
    assert result.ppl == pytest.approx(VOCAB, rel=1e-12)
    assert result.nll == pytest.approx(math.log(VOCAB), rel=1e-12)


def test_windows_are_non_overlapping_and_the_tail_is_dropped():
    runner, ids = UniformRunner(), random_ids(47)
    result = perplexity(runner, ids, seq_len=10, batch_size=3, progress=False)
    assert torch.equal(torch.cat(runner.seen).flatten(), ids[:40])
    assert [batch.shape[0] for batch in runner.seen] == [3, 1]
    assert (result.windows, result.tokens) == (4, 4 * 9)


def test_max_windows_caps_the_windows_scored():
    runner = UniformRunner()
    result = perplexity(runner, random_ids(100), seq_len=10, max_windows=2, progress=False)
    assert (result.windows, result.tokens) == (2, 18)
    assert sum(batch.shape[0] for batch in runner.seen) == 2


def test_summed_nll_of_known_probabilities():
    logits = torch.tensor([[0.5, 0.25, 0.25], [0.1, 0.1, 0.8]]).log()
    total, count = summed_nll(logits, torch.tensor([0, 2]))
    assert count == 2
    assert total == pytest.approx(-math.log(0.5) - math.log(0.8), rel=1e-6)


def test_too_few_tokens_for_one_window_is_a_sculpt_error():
    with pytest.raises(SculptError, match="fewer than one window of 64: lower the sequence length"):
        perplexity(UniformRunner(), random_ids(40), seq_len=64, progress=False)
    with pytest.raises(SculptError, match="at least 2"):
        perplexity(UniformRunner(), random_ids(40), seq_len=1, progress=False)


def test_torch_runner_returns_float32_cpu_logits_without_gradients():
    model = tiny_model("qwen2").train()
    runner = TorchRunner(model)
    assert isinstance(runner, Runner) and runner.name == "torch"
    logits = runner.logits(random_ids(14).view(2, 7))
    assert logits.shape == (2, 7, VOCAB)
    assert logits.dtype == torch.float32 and logits.device.type == "cpu"
    assert not logits.requires_grad and not model.training


def test_result_is_frozen_plain_data():
    result = PerplexityResult(ppl=2.0, nll=math.log(2.0), tokens=9, windows=1, seq_len=10)
    assert result.as_dict() == {"ppl": 2.0, "nll": math.log(2.0), "tokens": 9, "windows": 1, "seq_len": 10}
    with pytest.raises(AttributeError):
        result.ppl = 3.0
