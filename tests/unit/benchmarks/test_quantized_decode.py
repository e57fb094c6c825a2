"""The quantized-decode benchmark end to end on a tiny model: a fast-preset sculpt, fp32 and int4 exports,
perplexity, greedy agreement, memory and side-by-side timings, and the table with the speed-ups."""

import json

from benchmarks import quantized_decode
from tests.factories import tiny_checkpoint
from tests.threads import one_thread  # noqa: F401  (autouse)
from tests.trained import CORPUS


def test_the_benchmark_measures_every_variant_against_the_first(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(CORPUS)
    out = tmp_path / "out"
    quantized_decode.main([
        "--model", str(tiny_checkpoint(tmp_path / "model")), "--variants", "dense:fp32,dense:int4,0.8:int4",
        "--eval-corpus", str(corpus), "--calib-corpus", str(corpus), "--calib-samples", "4", "--calib-seqlen", "32",
        "--seq-len", "64", "--eval-windows", "2", "--prefill", "8,16", "--prompt", "8", "--new-tokens", "4",
        "--repeats", "3", "--warmup", "0", "--block-size", "16", "--agreement-tokens", "2", "--threads", "1",
        "--work", str(tmp_path / "work"), "--out", str(out)])
    result = json.loads((out / "results.json").read_text())
    rows = result["models"]
    assert list(rows) == ["dense fp32", "dense int4", "0.8 int4"] and result["reference"] == "dense fp32"
    assert rows["dense fp32"]["quantization"] is None
    assert rows["dense int4"]["quantization"]["bits"] == 4 and rows["dense int4"]["quantization"]["lm_head_bits"] == 8
    assert rows["dense int4"]["onnx_bytes"] < rows["dense fp32"]["onnx_bytes"]
    assert rows["0.8 int4"]["params"] < rows["dense int4"]["params"]
    for row in rows.values():
        assert row["ppl"] > 1 and 0 <= row["greedy_agreement"] <= 1 and row["peak_memory_bytes"] > 0
        assert row["decode_speedup"]["pairs"] == 3 and set(row["prefill_speedup"]) == {"8", "16"}
    assert rows["dense fp32"]["decode_speedup"]["median"] == 1.0
    table = (out / "results.md").read_text()
    assert "| 0.8 int4 |" in table and "output projection int8" in table
    assert "| 0.8 int4 |" in capsys.readouterr().out
