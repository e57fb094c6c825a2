"""The TensorRT-compatibility lint catches each hazard in small hand-made graphs, and cites its sources."""

import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper

from exporters.trt_lint import TABLES, lint, load_table
from pipeline.targets import TRT_TARGETS
from pipeline.cli import cli
from pipeline.errors import SculptError

FLOAT, INT64, BOOL = TensorProto.FLOAT, TensorProto.INT64, TensorProto.BOOL


def tensor(name, shape, dtype=FLOAT):
    return helper.make_tensor_value_info(name, dtype, shape)


def model(nodes, inputs, outputs, opset=18, functions=(), extra_opsets=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs)
    opsets = [helper.make_opsetid("", opset), *extra_opsets]
    return helper.make_model(graph, opset_imports=opsets, functions=list(functions))


def codes(report):
    return {(f.severity, f.code) for f in report.findings}


X = tensor("x", ["batch", 4])
Y = tensor("y", ["batch", 4])


def test_a_plain_graph_passes_everywhere():
    graph = model([helper.make_node("Relu", ["x"], ["y"])], [X], [Y])
    for target in TRT_TARGETS:
        assert lint(graph, target).ok and not lint(graph, target).findings


def test_onnx_runtime_contrib_ops_are_errors():
    node = helper.make_node("FusedMatMul", ["x", "x"], ["y"], domain="com.microsoft")
    graph = model([node], [X], [Y], extra_opsets=[helper.make_opsetid("com.microsoft", 1)])
    report = lint(graph, "trt-11")
    assert ("error", "contrib-op") in codes(report) and not report.ok
    assert "ONNX Runtime contrib op" in report.errors[0].message


def test_an_if_on_the_cache_branch_is_an_error_and_another_if_a_warning():
    past = tensor("past_key_values.0.key", ["batch", 2, "past", 8])
    then_graph = helper.make_graph([helper.make_node("Identity", ["x"], ["a"])], "then", [], [tensor("a", None)])
    else_graph = helper.make_graph([helper.make_node("Neg", ["x"], ["b"])], "else", [], [tensor("b", None)])
    zero = helper.make_tensor("zero", INT64, [], [0])
    length_axis = helper.make_tensor("two", INT64, [1], [2])
    nodes = [helper.make_node("Shape", ["past_key_values.0.key"], ["shape"]),
             helper.make_node("Gather", ["shape", "two"], ["length"]),
             helper.make_node("Equal", ["length", "zero"], ["empty_vec"]),
             helper.make_node("Squeeze", ["empty_vec"], ["empty"]),
             helper.make_node("If", ["empty"], ["y"], then_branch=then_graph, else_branch=else_graph)]
    graph = helper.make_graph(nodes, "g", [X, past], [Y], initializer=[zero, length_axis])
    report = lint(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), "trt-10.3")
    assert ("error", "cache-branch-if") in codes(report)

    flag = tensor("flag", [], BOOL)
    plain_if = helper.make_node("If", ["flag"], ["y"], then_branch=then_graph, else_branch=else_graph)
    report = lint(model([plain_if], [X, flag], [Y]), "trt-10.3")
    assert codes(report) == {("warning", "if")} and report.ok


def test_sequence_ops_and_sequence_io_are_errors():
    split = helper.make_node("SplitToSequence", ["x"], ["seq"], axis=1)
    back = helper.make_node("ConcatFromSequence", ["seq"], ["y"], axis=1)
    report = lint(model([split, back], [X], [Y]), "trt-11")
    assert [f.code for f in report.errors] == ["sequence-op", "sequence-op"]
    seq_out = helper.make_tensor_sequence_value_info("seq", FLOAT, None)
    report = lint(model([split], [X], [seq_out]), "trt-10.3")
    assert ("error", "sequence-type") in codes(report)


def test_an_opset_newer_than_the_target_is_an_error():
    graph = model([helper.make_node("Relu", ["x"], ["y"])], [X], [Y], opset=23)
    assert ("error", "opset") in codes(lint(graph, "trt-10.3"))  # 10.3 parses opsets up to 20
    assert lint(graph, "trt-10.x").ok and lint(graph, "trt-11").ok


def test_ops_added_after_10_3_are_unsupported_there_only():
    q = tensor("q", ["b", 4, "s", 8])
    attention = helper.make_node("Attention", ["q", "q", "q"], ["y"])
    rms = helper.make_node("RMSNormalization", ["q", "scale"], ["z"])
    graph = model([attention, rms], [q, tensor("scale", [8])], [tensor("y", None), tensor("z", None)], opset=23)
    report = lint(graph, "trt-10.3")
    unsupported = {f.message.split()[0] for f in report.findings if f.code == "unsupported-op"}
    assert unsupported == {"Attention", "RMSNormalization"}
    assert lint(graph, "trt-11").ok


def test_attention_fed_a_past_cache_is_an_error_where_attention_exists():
    q = tensor("q", ["b", 4, "s", 8])
    past = tensor("past_key", ["b", 4, "p", 8])
    attention = helper.make_node("Attention", ["q", "q", "q", "", "past_key", "past_key"], ["y", "pk", "pv"])
    graph = model([attention], [q, past], [tensor("y", None)], opset=23)
    assert ("error", "attention-past") in codes(lint(graph, "trt-11"))


def test_unsupported_ops_are_found_inside_local_functions_and_subgraphs():
    function = helper.make_function("local", "Uniq", ["a"], ["b"], [helper.make_node("Unique", ["a"], ["b"])],
                                    [helper.make_opsetid("", 18)])
    call = helper.make_node("Uniq", ["x"], ["y"], domain="local")
    graph = model([call], [X], [Y], functions=[function], extra_opsets=[helper.make_opsetid("local", 1)])
    report = lint(graph, "trt-10.3")
    assert [f.code for f in report.errors] == ["unsupported-op"] and "Unique" in report.errors[0].message

    body = helper.make_graph([helper.make_node("Unique", ["x"], ["u"])], "then", [], [tensor("u", None)])
    other = helper.make_graph([helper.make_node("Identity", ["x"], ["v"])], "else", [], [tensor("v", None)])
    branch = helper.make_node("If", ["flag"], ["y"], then_branch=body, else_branch=other)
    report = lint(model([branch], [X, tensor("flag", [], BOOL)], [Y]), "trt-11")
    assert ("error", "unsupported-op") in codes(report)


def test_zero_sized_dimensions_in_the_graph_or_a_profile():
    empty = tensor("x", [1, 0])
    assert ("error", "zero-dim") in codes(lint(model([helper.make_node("Relu", ["x"], ["y"])], [empty], [Y]),
                                               "trt-11"))
    past = tensor("past", ["batch", 2, "p", 8])
    graph = model([helper.make_node("Identity", ["past"], ["y"])], [past], [Y])
    needs_empty = {"prefill": {"past": ((1, 2, 0, 8), (1, 2, 0, 8), (1, 2, 64, 8))}}
    assert ("error", "zero-dim") in codes(lint(graph, "trt-10.3", needs_empty))
    on_11 = lint(graph, "trt-11", needs_empty)  # reported to work on 11.1: a warning there
    assert ("warning", "zero-dim") in codes(on_11) and on_11.ok
    one_slot = {"prefill": {"past": ((1, 2, 1, 8), (1, 2, 1, 8), (1, 2, 64, 8))}}
    assert lint(graph, "trt-10.3", one_slot).ok


def test_profiles_must_cover_every_input_and_respect_fixed_axes():
    past = tensor("past", ["batch", 2, "p", 8])
    graph = model([helper.make_node("Identity", ["past"], ["y"])], [past], [Y])
    wrong_heads = {"decode": {"past": ((1, 3, 1, 8), (1, 3, 4, 8), (1, 3, 8, 8))}}
    assert ("error", "profile") in codes(lint(graph, "trt-10.3", wrong_heads))
    assert ("error", "profile") in codes(lint(graph, "trt-10.3", {"decode": {}}))


def test_operator_tables_record_their_sources_and_grow_with_the_version():
    tables = {target: load_table(target) for target in TRT_TARGETS}
    for table in tables.values():
        assert table["sources"] and all("url" in source for source in table["sources"])
        assert table["derivation"]
    assert set(tables["trt-10.3"]["supported"]) < set(tables["trt-10.x"]["supported"]) <= set(
        tables["trt-11"]["supported"])
    assert not {"SplitToSequence", "SequenceAt"} & set(tables["trt-11"]["supported"])
    assert sorted(p.stem for p in TABLES.glob("*.json")) == sorted(TRT_TARGETS)
    with pytest.raises(SculptError, match="unknown TensorRT target"):
        load_table("trt-7")


def test_lint_command_exits_1_on_errors(tmp_path):
    good, bad = tmp_path / "good.onnx", tmp_path / "bad.onnx"
    onnx.save(model([helper.make_node("Relu", ["x"], ["y"])], [X], [Y]), good)
    onnx.save(model([helper.make_node("Unique", ["x"], ["y"])], [X], [Y]), bad)
    runner = CliRunner()
    ok = runner.invoke(cli, ["lint", str(good), "--target", "trt-10.3"])
    assert ok.exit_code == 0 and "trt-10.3" in ok.output and "OK" in ok.output
    failed = runner.invoke(cli, ["lint", str(bad)])
    assert failed.exit_code == 1 and "Unique" in failed.output and failed.output.count("error") >= 3
