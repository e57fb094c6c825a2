"""The memory probe reports what the model adds in its own process, not what the caller holds."""

from tests.factories import tiny_checkpoint
from validators.backends import ModelFiles
from validators.memory import measure_memory

BALLAST = 768 * 2**20


def test_the_probe_counts_the_model_not_the_memory_of_the_process_that_started_it(tmp_path):
    ballast = bytearray(BALLAST)
    ballast[::4096] = b"\1" * len(range(0, BALLAST, 4096))  # resident, so the caller's peak is over BALLAST
    result = measure_memory("torch", ModelFiles(checkpoint=tiny_checkpoint(tmp_path / "model")),
                            prompt_len=16, new_tokens=2)
    assert result.peak_rss_bytes < BALLAST  # a fresh process with torch and a tiny model
    assert 0 < result.model_rss_bytes < 128 * 2**20
    assert result.model_bytes == result.model_rss_bytes and result.cuda_peak_bytes is None
    del ballast
