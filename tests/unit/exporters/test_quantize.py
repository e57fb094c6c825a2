"""Weight-only int4/int8 quantization of an exported graph with ONNX Runtime's MatMulNBits quantizer.

On the tiny heterogeneous sculpt (per-layer KV heads, skipped and linear sublayers, a removed layer),
exported with its weights in an external data file: every projection and the output projection
become MatMulNBits, the KV-cache inputs and outputs stay as io.json says, and the quantized graph
still decodes through the cache, int8 closer to fp32 than int4.
"""

import shutil

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from exporters.onnx_io import LOGITS
from exporters.quantize import (
    QUANTIZED_OP,
    WeightQuantization,
    output_projection,
    quantize_graph,
    untie_output_projection,
)
from pipeline.errors import SculptError
from tests.onnx_fixtures import exported_tiny, sculpted_tiny  # noqa: F401 (fixtures)
from validators.ort_runner import OrtRunner


def spec(bits=4, block_size=16, **overrides):
    values = dict(bits=bits, block_size=block_size, symmetric=False, algorithm="default", accuracy_level=4,
                  lm_head="same")
    return WeightQuantization(**{**values, **overrides})


def quantized_copy(graph, directory, quantization):
    shutil.copytree(graph.directory, directory)
    return quantize_graph(directory, quantization), OrtRunner.from_export_dir(directory)


@pytest.fixture(scope="module")
def prompt():
    return torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(0))


def test_int4_quantizes_every_weight_matmul_and_keeps_the_kv_cache_io(exported_tiny, tmp_path, prompt):
    result, runner = quantized_copy(exported_tiny, tmp_path / "int4", spec())
    graph = onnx.load(str(tmp_path / "int4" / "model.onnx"))
    ops = [node.op_type for node in graph.graph.node]
    constant = {init.name for init in graph.graph.initializer}
    assert ops.count(QUANTIZED_OP) == len(result.quantized) > 0 and result.kept == []
    assert not [n for n in graph.graph.node if n.op_type == "MatMul" and n.input[1] in constant]
    assert output_projection(graph.graph).op_type == QUANTIZED_OP
    assert [i.name for i in runner.session.get_inputs()] == exported_tiny.io.input_names
    assert [o.name for o in runner.session.get_outputs()] == exported_tiny.io.output_names
    assert not (tmp_path / "int4" / "model.onnx.data").exists()  # small: one file, as the size rule says
    assert result.bytes_after < 0.6 * result.bytes_before
    tokens = runner.generate(prompt, 6)  # through the KV cache, the presents fed back as the past
    assert tokens.shape == (2, 18) and torch.equal(tokens[:, :12], prompt)


def test_int8_is_closer_to_the_fp32_graph_than_int4(exported_tiny, tmp_path, prompt):
    reference = OrtRunner.from_export_dir(exported_tiny.directory).logits(prompt)
    errors = {}
    for bits in (4, 8):
        _, runner = quantized_copy(exported_tiny, tmp_path / f"int{bits}", spec(bits))
        errors[bits] = (runner.logits(prompt) - reference).abs().max().item()
    assert 0 < errors[8] < errors[4] / 4


def attribute(node, name):
    return next(a.i for a in node.attribute if a.name == name)


def test_the_output_projection_is_int8_by_default_fp32_or_the_same_bits_when_asked(exported_tiny, tmp_path):
    for head, bits in (("int8", 8), ("same", 4)):
        result, _ = quantized_copy(exported_tiny, tmp_path / head, spec(lm_head=head))
        graph = onnx.load(str(tmp_path / head / "model.onnx")).graph
        projection = output_projection(graph)
        others = {attribute(n, "bits") for n in graph.node if n.op_type == QUANTIZED_OP and n is not projection}
        assert attribute(projection, "bits") == bits and others == {4} and result.as_dict()["lm_head_bits"] == bits
    result, _ = quantized_copy(exported_tiny, tmp_path / "fp32", spec(lm_head="fp32"))
    graph = onnx.load(str(tmp_path / "fp32" / "model.onnx"))
    assert result.kept == [output_projection(graph.graph).name]
    assert output_projection(graph.graph).op_type == "MatMul"


def test_external_data_stays_external_when_asked(exported_tiny, tmp_path):
    shutil.copytree(exported_tiny.directory, tmp_path / "ext")
    quantize_graph(tmp_path / "ext", spec(), external_data=True)
    assert (tmp_path / "ext" / "model.onnx.data").stat().st_size > 0
    OrtRunner.from_export_dir(tmp_path / "ext").logits(torch.ones(1, 4, dtype=torch.long))


def tied_graph(hidden=32, vocab=64):
    """Logits = MatMul(x, Transpose(embedding)), the embedding also Gathered: how a tied head can export."""
    table = np.random.default_rng(0).standard_normal((vocab, hidden)).astype(np.float32)
    nodes = [helper.make_node("Gather", ["embedding", "ids"], ["x"], name="embed"),
             helper.make_node("Transpose", ["embedding"], ["head_t"], perm=[1, 0], name="transpose"),
             helper.make_node("MatMul", ["x", "head_t"], [LOGITS], name="lm_head")]
    graph = helper.make_graph(nodes, "tied", [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, "s"])],
                              [helper.make_tensor_value_info(LOGITS, TensorProto.FLOAT, [1, "s", vocab])],
                              [numpy_helper.from_array(table, "embedding")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), table


def test_a_tied_output_projection_gets_its_own_copy_to_quantize():
    model, table = tied_graph()
    assert untie_output_projection(model)
    head = output_projection(model.graph)
    weights = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    assert np.array_equal(weights[head.input[1]], table.T)
    assert np.array_equal(weights["embedding"], table)  # the Gather keeps its fp32 table
    assert "Transpose" not in [node.op_type for node in model.graph.node]
    assert not untie_output_projection(model)  # already a constant: nothing to do


def test_bad_settings_are_one_line_errors():
    with pytest.raises(SculptError, match="power of two"):
        spec(block_size=48)
    with pytest.raises(SculptError, match="4 bits only"):
        spec(bits=8, algorithm="hqq")
    with pytest.raises(SculptError, match="int4 or int8"):
        spec(bits=3)
    with pytest.raises(SculptError, match="lm_head"):
        spec(lm_head="int2")


def test_the_recipe_defaults_give_min_max_int4_with_an_int8_head():
    from pipeline.recipe import QuantizationSection

    made = WeightQuantization.from_section("int4", QuantizationSection())
    assert (made.bits, made.block_size, made.algorithm, made.accuracy_level, made.head_bits) == (4, 32, "default", 4, 8)
    assert WeightQuantization.from_section("int8", QuantizationSection()).head_bits == 8


def test_hqq_quantizes_with_the_accuracy_level_asked_for(exported_tiny, tmp_path, prompt):
    result, runner = quantized_copy(exported_tiny, tmp_path / "hqq", spec(algorithm="hqq"))
    graph = onnx.load(str(tmp_path / "hqq" / "model.onnx"))
    levels = {a.i for n in graph.graph.node if n.op_type == QUANTIZED_OP for a in n.attribute
              if a.name == "accuracy_level"}
    assert levels == {4} and result.as_dict()["algorithm"] == "hqq"
    assert runner.generate(prompt, 4).shape == (2, 16)
