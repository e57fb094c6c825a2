"""The TensorRT runner, driven through a FAKE `tensorrt` whose engine really computes (tests/fake_tensorrt.py).

No TensorRT and no GPU exist here. The engine is built by llm-sculpt's own build code (exporters/
trt_build.py) through the fake, with the plan's prefill and decode profiles; the fake's runtime runs
the same ONNX through ONNX Runtime, reading and writing the raw memory the runner binds, and refuses
what TensorRT refuses (a shape outside the selected profile, an unset shape or address). So these
tests check the runner's profiles, shapes, buffers and KV-cache loop; they say nothing about TensorRT's
own numerics, speed or memory.
"""

import sys

import pytest
import torch

from exporters.onnx_io import DECODE, PREFILL, PROFILES, GraphIO
from exporters.trt_build import build_engine
from exporters.trt_plan import BuildPlan
from pipeline.errors import SculptError
from pipeline.measures.perplexity import perplexity
from pipeline.measures.runners import DecodingRunner, MeasuredRunner
from pipeline.recipe import BuildSection
from tests.fake_tensorrt import FAKE_DEVICE, make_fake_tensorrt
from tests.onnx_fixtures import exported_tiny, exported_tiny_fp16, sculpted_tiny  # noqa: F401 (fixtures)
from validators import trt_runner
from validators.backends import ModelFiles, resolve_backends
from validators.ort_runner import OrtRunner
from validators.trt_runner import TrtRunner

SECTION = BuildSection(batch=(1, 2, 4), prompt=(1, 16, 32), context=(1, 32, 64), workspace_mib=64)
PROMPT, CONTEXT, BATCH = 32, 64, 4  # the largest prompt, cache (dummy slot included) and batch of SECTION


def build(graph, directory, precision="fp32"):
    """Build `graph` with llm-sculpt's build code through a fresh fake; (engine directory, fake module)."""
    fake = make_fake_tensorrt("10.3.0")
    plan = BuildPlan.from_section(SECTION.model_copy(update={"precision": precision}), graph.io, graph.io.dtype)
    directory.mkdir()
    build_engine(plan, graph.path, directory, fake, FAKE_DEVICE, str(directory.parent / "timing.cache"),
                 log=lambda _: None)
    return directory, fake


@pytest.fixture(scope="module")
def engine(exported_tiny, tmp_path_factory):
    return build(exported_tiny, tmp_path_factory.mktemp("trt") / "build")


@pytest.fixture()
def runner(engine, monkeypatch):
    directory, fake = engine
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    opened = TrtRunner.from_build_dir(directory, device="cpu")  # host memory: the fake reads it through ctypes
    fake.calls.clear(), fake.errors.clear()
    return opened


@pytest.fixture(scope="module")
def ort(exported_tiny):
    return OrtRunner.from_export_dir(exported_tiny.directory)


def executed(fake):
    """(profile index, input shapes) of each engine call."""
    return [args for call, args in fake.calls if call == "execute_async_v3"]


def switches(fake):
    return [args[0] for call, args in fake.calls if call == "set_optimization_profile_async"]


def random_ids(batch, length, seed=0):
    return torch.randint(0, 128, (batch, length), generator=torch.Generator().manual_seed(seed))


def test_the_build_writes_the_io_beside_the_engine_and_the_runner_is_every_kind_of_runner(engine, exported_tiny,
                                                                                         runner):
    directory, _ = engine
    assert GraphIO.load(directory) == exported_tiny.io
    assert isinstance(runner, MeasuredRunner) and isinstance(runner, DecodingRunner) and runner.name == "tensorrt"
    assert runner.profile_range(PREFILL) == ((1, 1), (BATCH, PROMPT))
    assert runner.profile_range(DECODE, "attention_mask") == ((1, 2), (BATCH, CONTEXT + 1))


def test_perplexity_equals_onnx_runtime_on_the_same_onnx(runner, ort, engine):
    ids = random_ids(1, PROMPT * 5).flatten()
    trt_ppl = perplexity(runner, ids, PROMPT, batch_size=2, progress=False)
    ort_ppl = perplexity(ort, ids, PROMPT, batch_size=2, progress=False)
    assert trt_ppl.tokens == ort_ppl.tokens == 5 * (PROMPT - 1)
    assert abs(trt_ppl.ppl - ort_ppl.ppl) <= 1e-4 * ort_ppl.ppl
    calls = executed(engine[1])
    assert [profile for profile, _ in calls] == [0, 0, 0]  # windows 2 + 2 + 1, all in the prefill profile
    assert [shapes["input_ids"] for _, shapes in calls] == [(2, PROMPT), (2, PROMPT), (1, PROMPT)]
    assert switches(engine[1]) == [0]


def test_greedy_decoding_through_the_kv_cache_matches_onnx_runtime(runner, ort, engine):
    fake = engine[1]
    prompt, new = random_ids(2, 5, seed=1), 12
    steps = runner.greedy_logits(prompt, new)
    torch.testing.assert_close(steps, ort.greedy_logits(prompt, new), rtol=1e-4, atol=1e-5)
    tokens = runner.generate(prompt, new)
    assert torch.equal(tokens, ort.generate(prompt, new))
    # the cache is the model's: a step's logits are those of the whole sequence scored at once
    whole = ort.logits(tokens[:, :-1])
    torch.testing.assert_close(steps, whole[:, prompt.shape[1] - 1:], rtol=1e-4, atol=1e-5)

    calls = executed(fake)
    assert [profile for profile, _ in calls] == ([0] + [1] * (new - 1)) * 2
    first = calls[: new]
    assert [shapes["past_key_values.0.key"][2] for _, shapes in first] == [1] + [1 + 5 + i for i in range(new - 1)]
    assert [shapes["attention_mask"] for _, shapes in first[1:]] == [(2, 1 + 5 + i + 1) for i in range(new - 1)]
    assert all(shapes["input_ids"] == (2, 1) for _, shapes in first[1:])
    assert switches(fake) == [0, 1, 0, 1]  # once per phase, not per step
    assert not fake.errors


def test_a_batch_larger_than_the_profile_is_scored_in_slices(runner, ort, engine):
    ids = random_ids(BATCH + 1, 9, seed=2)
    torch.testing.assert_close(runner.logits(ids), ort.logits(ids), rtol=1e-4, atol=1e-5)
    assert [shapes["input_ids"] for _, shapes in executed(engine[1])] == [(BATCH, 9), (1, 9)]


def test_shapes_outside_a_profile_name_the_build_setting_to_widen(runner):
    with pytest.raises(SculptError, match=r"prefill profile takes input_ids from \(1, 1\) to \(4, 32\), not "
                                          r"\(1, 33\).*build.batch / build.prompt"):
        runner.logits(random_ids(1, PROMPT + 1))
    with pytest.raises(SculptError, match=r"decode profile.*build.context"):
        runner.generate(random_ids(1, PROMPT), CONTEXT)  # the cache outgrows the decode profile's 64 slots
    with pytest.raises(SculptError, match=r"prefill profile.*not \(5, 4\)"):
        runner.decode_throughput(batch=BATCH + 1, prompt_len=4, new_tokens=2, warmup=0, repeats=1)


def test_a_validate_workload_is_checked_against_the_profiles_before_it_runs(runner):
    fits = dict(prompts={"validate.seq_len": PROMPT}, batches={"validate.decode_batch_sizes": BATCH},
                cached={"validate.decode_prompt_len + decode_new_tokens": CONTEXT})
    assert runner.workload_problem(**fits) is None
    too_big = dict(prompts={"validate.seq_len": 2048, "validate.prefill_lengths": 16},
                   batches={"validate.decode_batch_sizes": BATCH + 1},
                   cached={"validate.decode_prompt_len + decode_new_tokens": CONTEXT + 1})
    problem = runner.workload_problem(**too_big)
    assert "validate.seq_len 2048 > 32 prompt tokens (build.prompt)" in problem
    assert "validate.decode_batch_sizes 5 > 4 sequences (build.batch)" in problem
    assert f"{CONTEXT + 1} > {CONTEXT} cached tokens (build.context)" in problem
    assert "prefill_lengths" not in problem  # only what does not fit is named


def test_the_default_recipe_validates_within_the_default_engine_profiles():
    """validate's defaults (seq_len 2048, decode batch 4, memory workload) fit the build defaults' profiles."""
    from pipeline.recipe import Recipe
    from pipeline.stages.validate.measure import Workload

    recipe = Recipe()
    needs = Workload.from_recipe(recipe.validate_, recipe.data.batch_size).engine_needs
    build = recipe.build
    assert max(needs["prompts"].values()) <= build.prompt[2]
    assert max(needs["batches"].values()) <= build.batch[2]
    assert max(needs["cached"].values()) + 1 <= build.context[2]  # + the dummy slot


def test_a_runner_that_picks_the_wrong_profile_fails_here(runner, engine, monkeypatch):
    """The fake is strict enough for a profile mix-up to fail: a prompt is refused by the decode profile."""
    monkeypatch.setattr(trt_runner, "PROFILES", tuple(reversed(PROFILES)))
    with pytest.raises(SculptError, match="prefill profile"):
        runner.logits(random_ids(1, 5))
    assert "outside profile 1" in engine[1].errors[-1]


def test_the_fake_refuses_what_tensorrt_refuses(engine):
    directory, fake = engine
    engine_ = fake.Runtime(None).deserialize_cuda_engine((directory / "model.plan").read_bytes())
    context = engine_.create_execution_context()
    assert not context.set_optimization_profile_async(2, 0)
    assert not context.set_input_shape("input_ids", (1, PROMPT + 1))  # profile 0 (prefill): up to 32 tokens
    assert not context.set_input_shape("past_key_values.0.key", (1, 1, 1, 8))  # the graph has 2 KV heads there
    assert context.set_optimization_profile_async(1, 0)
    assert not context.set_input_shape("input_ids", (1, 2))  # the decode profile takes one token
    assert context.set_input_shape("input_ids", (1, 1))
    assert context.set_optimization_profile_async(0, 0) and "input_ids" not in context.shapes  # forgotten
    assert not context.execute_async_v3(0) and "shapes not set" in fake.errors[-1]
    assert not context.set_tensor_address("logits", 0)
    assert fake.Runtime(None).deserialize_cuda_engine(b"not an engine") is None


def test_latency_is_timed_through_the_engine(runner):
    prefill = runner.prefill_latency(8, batch=1, warmup=0, repeats=2)
    decode = runner.decode_throughput(batch=2, prompt_len=4, new_tokens=3, warmup=0, repeats=2)
    assert prefill.median_s > 0 and prefill.repeats == 2
    assert decode.tokens_per_s > 0 and decode.batch == 2 and decode.new_tokens == 3


def test_an_fp16_engine_runs_its_half_precision_cache(exported_tiny_fp16, tmp_path, monkeypatch):
    directory, fake = build(exported_tiny_fp16, tmp_path / "build", precision="fp16")
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    runner, ort = TrtRunner.from_build_dir(directory, device="cpu"), OrtRunner.from_export_dir(
        exported_tiny_fp16.directory)
    prompt = random_ids(1, 6, seed=3)
    assert torch.equal(runner.generate(prompt, 8), ort.generate(prompt, 8))
    ids = random_ids(1, PROMPT * 2).flatten()
    trt_ppl, ort_ppl = (perplexity(r, ids, PROMPT, progress=False).ppl for r in (runner, ort))
    assert abs(trt_ppl - ort_ppl) <= 1e-4 * ort_ppl
    outputs, _ = runner.prefill(prompt.numpy(), logits_on_host=False)
    assert outputs["present.0.key"].dtype == torch.float16 and isinstance(outputs["logits"], torch.Tensor)


def test_opening_an_engine_says_what_is_wrong(engine, tmp_path, monkeypatch):
    directory, fake = engine
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # not installed
    with pytest.raises(SculptError, match="TensorRT's Python bindings"):
        TrtRunner.from_build_dir(directory, device="cpu")
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    with pytest.raises(SculptError, match="no engine"):
        TrtRunner.from_build_dir(tmp_path, device="cpu")
    (tmp_path / "model.plan").write_bytes(b"an engine of another TensorRT")
    (tmp_path / "io.json").write_text((directory / "io.json").read_text())
    with pytest.raises(SculptError, match="could not load .*rebuild it here"):
        TrtRunner.from_build_dir(tmp_path, device="cpu")


def test_validate_runs_tensorrt_where_an_engine_its_io_and_a_gpu_are(engine, tmp_path, monkeypatch):
    from tests.factories import tiny_checkpoint

    directory, fake = engine
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    files = ModelFiles(checkpoint=tiny_checkpoint(tmp_path / "model"), build=directory)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    _, unavailable = resolve_backends("auto", files)
    assert "no CUDA GPU" in unavailable["tensorrt"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert "tensorrt" in resolve_backends("auto", files)[0]
    bare = tmp_path / "old-build"
    bare.mkdir()
    (bare / "model.plan").write_bytes((directory / "model.plan").read_bytes())
    _, unavailable = resolve_backends("auto", ModelFiles(checkpoint=files.checkpoint, build=bare))
    assert "no io.json beside the engine" in unavailable["tensorrt"]


def test_importing_the_runner_imports_no_tensorrt():
    import subprocess

    from tests import REPO_ROOT

    code = "import sys, validators.trt_runner; print('tensorrt' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO_ROOT)
    assert out.stdout.strip() == "False"
