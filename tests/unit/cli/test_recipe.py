"""Recipes: typed, unknown keys are errors naming the key, flags override files."""

import pytest

from pipeline.errors import SculptError
from pipeline.recipe import Recipe, build_recipe, load_recipe


def test_defaults_work_offline_on_the_default_model():
    recipe = Recipe()
    assert recipe.model.source == "default" and recipe.data.calibration == "auto" and recipe.search.ratio == 0.8


def test_overrides_replace_file_values(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("search:\n  ratio: 0.9\n  method: uniform\nvalidate:\n  seq_len: 128\n")
    recipe = load_recipe(path, {"search.ratio": 0.5})
    assert recipe.search.ratio == 0.5 and recipe.validate_.seq_len == 128
    assert build_recipe(recipe.to_dict()) == recipe


@pytest.mark.parametrize("text, words", [
    ("search:\n  ratoi: 0.5\n", "unknown key 'search.ratoi'"),
    ("serach:\n  ratio: 0.5\n", "unknown key 'serach'"),
    ("search:\n  ratio: 1.5\n", "search.ratio"),
    ("search:\n  ratio: 0\n", "search.ratio"),
    ("search: [1, 2\n", "not valid YAML at line"),
    ("- 1\n- 2\n", "mapping of sections"),
    # the choices come from pipeline.targets, and the message still lists them
    ("build:\n  target: trt-9\n", "build.target: Input should be 'trt-10.3', 'trt-10.x' or 'trt-11'"),
    ("validate:\n  backends: [torch, tvm]\n", "Input should be 'torch', 'onnxruntime' or 'tensorrt'"),
])
def test_bad_recipes_name_the_problem(tmp_path, text, words):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(SculptError, match=words):
        load_recipe(path)


def test_missing_recipe_file(tmp_path):
    with pytest.raises(SculptError, match="not found"):
        load_recipe(tmp_path / "nope.yaml")


@pytest.mark.parametrize("text", ["validate:\n  max_windows: 0\n", "validate:\n  max_windows: null\n"])
def test_zero_or_null_windows_mean_the_whole_split_in_a_file_as_on_the_command_line(tmp_path, text):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    assert load_recipe(path).validate_.max_windows is None
    assert load_recipe(tmp_path / "r.yaml", {"validate.max_windows": 0}).validate_.max_windows is None
    with pytest.raises(SculptError, match="validate.max_windows"):
        load_recipe(path, {"validate.max_windows": -1})
