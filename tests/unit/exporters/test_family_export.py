"""ONNX export of every family, sliding-window layers included: the graph computes what PyTorch computes."""

import pytest
import torch

from exporters.onnx_export import export_model
from tests.factories import FAMILIES, SLIDING_WINDOW
from tests.onnx_fixtures import heterogeneous_model, torch_greedy
from validators.ort_runner import OrtRunner

LONG = torch.randint(3, 128, (2, 3 * SLIDING_WINDOW + 2), generator=torch.Generator().manual_seed(11))


@pytest.mark.parametrize("family", FAMILIES)
def test_a_cut_model_of_every_family_exports_with_parity_past_the_window(family, tmp_path):
    model = heterogeneous_model(family)
    graph = export_model(model, tmp_path, external_data=False)
    runner = OrtRunner.from_export_dir(graph.directory)
    with torch.no_grad():
        expected = model(LONG, use_cache=False).logits
    assert (runner.logits(LONG) - expected).abs().max().item() <= 1e-4
    prompt = LONG[:, :4]  # the decoded tokens run past the window: the cache's masking is what is tested
    assert torch.equal(runner.generate(prompt, 2 * SLIDING_WINDOW), torch_greedy(model, prompt, 2 * SLIDING_WINDOW))
