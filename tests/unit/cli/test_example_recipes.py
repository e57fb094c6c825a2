"""The example recipes in examples/recipes/ load, and say what their comments promise."""


import pytest
from pydantic import BaseModel

from pipeline.recipe import Recipe, load_recipe
from tests import REPO_ROOT

EXAMPLES = REPO_ROOT / "examples" / "recipes"
NEEDS_EXPORT = {"x86-gpu.yaml", "jetson-orin.yaml"}  # use the export/build sections


def test_every_example_is_tested():
    assert {p.name for p in EXAMPLES.glob("*.yaml")} == {"cpu-quickstart.yaml", "impossible-gate.yaml"} | NEEDS_EXPORT


@pytest.mark.parametrize("name", ["cpu-quickstart.yaml", "impossible-gate.yaml"])
def test_cpu_examples_run_offline_on_the_default_model_with_gates(name):
    recipe = load_recipe(EXAMPLES / name)
    assert recipe.model.source == "default" and recipe.model.device == "cpu"
    assert recipe.validate_.gates.active()


def test_the_impossible_gate_allows_no_perplexity_increase():
    assert load_recipe(EXAMPLES / "impossible-gate.yaml").validate_.gates.active() == {"max_ppl_increase": 0}


@pytest.mark.parametrize("name", sorted(NEEDS_EXPORT))
def test_gpu_examples_load_with_the_export_and_build_sections(name):
    recipe = load_recipe(EXAMPLES / name)
    assert recipe.build.target == "trt-10.3" and recipe.export.precision == "fp16"
    assert recipe.validate_.gates.parity_tolerance is not None


def test_the_recipe_reference_documents_every_key():
    reference = (EXAMPLES.parents[1] / "docs" / "recipes.md").read_text()

    def keys(model, prefix=""):
        for name, field in model.model_fields.items():
            key = field.alias or name
            annotation = field.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                yield from keys(annotation, f"{prefix}{key}.")
            else:
                yield prefix + key

    missing = [key for key in keys(Recipe) if f"`{key}`" not in reference and f"`{key.rsplit('.', 1)[-1]}`" not in reference
               and not key.startswith(("export.", "build."))]  # documented in docs/export.md
    assert not missing


@pytest.mark.parametrize("name", sorted(NEEDS_EXPORT))
def test_gpu_examples_validate_within_the_profiles_of_the_engine_they_build(name):
    """validate runs TensorRT only on a workload its engine's profiles take (TrtRunner.workload_problem)."""
    from pipeline.stages.validate.measure import Workload

    recipe = load_recipe(EXAMPLES / name)
    needs = Workload.from_recipe(recipe.validate_, recipe.data.batch_size).engine_needs
    assert max(needs["prompts"].values()) <= recipe.build.prompt[2]
    assert max(needs["batches"].values()) <= recipe.build.batch[2]
    assert max(needs["cached"].values()) + 1 <= recipe.build.context[2]  # + the masked dummy slot
