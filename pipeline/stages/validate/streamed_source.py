"""The dense source's perplexity when the source is streamed from disk (too big for memory, docs/scale.md).

`perplexity` (pipeline/measures) runs a whole model window by window; a streamed source has its weights on disk,
so here the evaluation windows go through it layer by layer instead (`LayerStream`, as the search and reform
passes do): every window's residual stream advances through one decoder layer at a time, each layer read from
disk and dropped, then the final norm and the head score each window. It computes what `perplexity` computes
(the same windows, the same float64 sum of negative log-likelihoods); the sums come in another order, so the
last digits may differ.
"""

from __future__ import annotations

import torch
from torch import nn
from tqdm.auto import tqdm

from ...compress.calibration.layer_stream import LayerStream
from ...data.sampling import evaluation_windows
from ...errors import SculptError
from ...measures.perplexity import PerplexityResult, summed_nll
from ...models.adapters import adapter_for


@torch.no_grad()
def streamed_perplexity(model: nn.Module, ids: torch.LongTensor, seq_len: int, max_windows: int | None = None,
                        batch_size: int = 1, progress: bool = True) -> PerplexityResult:
    """Perplexity of the (streamed) family model `model` on 1-D `ids` cut into windows of `seq_len`, as
    `pipeline.measures.perplexity.perplexity` gives it, with one decoder layer in memory at a time."""
    if seq_len < 2:
        raise SculptError(f"sequence length {seq_len} leaves no token to predict: pass a sequence length of at least 2")
    adapter = adapter_for(model.config)
    windows = evaluation_windows(ids, seq_len, max_windows)
    stream = LayerStream(model, adapter, windows, batch_size)
    layers = adapter.layers(model)
    for layer in tqdm(layers, desc="perplexity (streamed source)", unit="layer", disable=None if progress else True):
        stream.advance(stream.run(layer))
    norm, head = adapter.final_norm(model), adapter.lm_head(model)
    nll_sum, tokens = 0.0, 0
    with stream.hold(norm, head):
        for hidden, batch in zip(stream.hidden, windows.split(batch_size)):
            logits = head(norm(hidden))
            for row_logits, row_ids in zip(logits, batch):
                window_nll, count = summed_nll(row_logits[:-1], row_ids[1:].to(row_logits.device))
                nll_sum, tokens = nll_sum + window_nll, tokens + count
            del logits
    nll = nll_sum / tokens
    ppl = float(torch.tensor(nll, dtype=torch.float64).exp())
    return PerplexityResult(ppl=ppl, nll=nll, tokens=tokens, windows=len(windows), seq_len=seq_len)
