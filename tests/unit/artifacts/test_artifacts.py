"""The artifact store: versions, atomic stages, the manifest, resume, verify and inspect."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from pipeline.artifacts import (Artifact, latest_version, library_versions, list_versions, manifest, parse_version,
                                read_manifest, store, summary, verify, version_name)
from pipeline.errors import SculptError

SOURCE = {"id": "HuggingFaceTB/SmolLM2-135M", "kind": "hub", "revision": "12fd25f"}
RECIPE = {"target": {"params": 0.5}, "calibration": {"corpus": "wikitext2", "samples": 128}}


def new_artifact(root: Path) -> Artifact:
    return Artifact.create(root, source=SOURCE, recipe=RECIPE)


def run_search(art: Artifact, content: bytes = b'{"layers": 4}', **options) -> None:
    with art.stage("search", options=options) as st:
        (st.dir / "arch.json").write_bytes(content)
        st.metrics["best_ppl"] = 13.52


def run_slice(art: Artifact, weights: bytes = b"\x01" * 4096, **options) -> None:
    with art.stage("slice", options=options, inputs=["search/arch.json"]) as st:
        (st.dir / "model").mkdir()
        (st.dir / "model" / "config.json").write_text('{"model_type": "sculpted"}')
        (st.dir / "model" / "model.safetensors").write_bytes(weights)
        st.metrics["params"] = 67_500_000


def leftovers(art: Artifact) -> list[str]:
    return [p.name for p in art.path.iterdir() if p.name.startswith(".tmp-")]


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.fixture
def art(tmp_path) -> Artifact:
    return new_artifact(tmp_path / "artifacts")


# --- versions ----------------------------------------------------------------------------------------------------

def test_version_names_sort_as_strings_exactly_as_numbers_past_9999():
    numbers = [1, 2, 9, 10, 99, 100, 999, 1000, 9998, 9999, 10000, 10001, 99999, 100000, 123456, 10**7]
    names = [version_name(n) for n in numbers]
    assert names[:2] == ["v0001", "v0002"] and version_name(10000) == "vx10000"
    assert sorted(names) == names
    assert [parse_version(name) for name in names] == numbers


@pytest.mark.parametrize("name", ["v10000", "v01", "v00001", "vx0001", "vx9999", "v0000", "V0001", "slice"])
def test_non_canonical_names_are_not_versions(name):
    assert parse_version(name) is None


def test_versions_continue_past_9999_and_list_in_order(tmp_path):
    for name in ("v9998", "v9999"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "manifest.json").write_text("{}")
    created = new_artifact(tmp_path)
    assert created.version == "vx10000"
    assert [p.name for p in list_versions(tmp_path)] == ["v9998", "v9999", "vx10000"]
    assert sorted(os.listdir(tmp_path)) == ["v9998", "v9999", "vx10000"]
    assert latest_version(tmp_path) == created.path


def test_create_never_reuses_or_overwrites_a_version(tmp_path):
    first = new_artifact(tmp_path)
    run_search(first)
    before = (first.path / "manifest.json").read_bytes()
    (tmp_path / "v0002").mkdir()  # left empty by a creator that crashed before writing its manifest
    second = new_artifact(tmp_path)
    assert (first.version, second.version) == ("v0001", "v0003")
    assert (first.path / "manifest.json").read_bytes() == before
    assert [p.name for p in list_versions(tmp_path)] == ["v0001", "v0003"]


def test_concurrent_creators_get_distinct_versions(tmp_path):
    count = 16
    barrier = threading.Barrier(count)

    def create(_):
        barrier.wait()
        return new_artifact(tmp_path).version

    with ThreadPoolExecutor(count) as pool:
        versions = list(pool.map(create, range(count)))
    assert sorted(versions) == [version_name(n) for n in range(1, count + 1)]
    assert len(list_versions(tmp_path)) == count


def test_no_versions_yet(tmp_path):
    assert list_versions(tmp_path / "missing") == [] and latest_version(tmp_path) is None


# --- stages ------------------------------------------------------------------------------------------------------

def test_successful_stage_records_output_hashes_and_the_manifest_round_trips(art):
    weights = os.urandom(3 * 1024 * 1024)
    run_search(art, pop=8)
    run_slice(art, weights)
    record = art.record("slice")
    assert record.status == "done" and record.metrics == {"params": 67_500_000}
    assert record.outputs["slice/model/model.safetensors"].sha256 == hashlib.sha256(weights).hexdigest()
    assert record.outputs["slice/model/model.safetensors"].bytes == len(weights)
    assert set(record.outputs) == {"slice/model/config.json", "slice/model/model.safetensors"}
    assert record.inputs == {"search/arch.json": hashlib.sha256(b'{"layers": 4}').hexdigest()}
    assert record.started <= record.finished and record.started.endswith("Z") and "torch" in record.versions
    assert (art.path / "slice/model/model.safetensors").read_bytes() == weights and not leftovers(art)

    text = (art.path / "manifest.json").read_text()
    data = json.loads(text)
    assert (data["schema"], data["schema_version"]) == ("llm-sculpt/manifest", 1)
    assert data["source"] == SOURCE and data["recipe"] == RECIPE
    assert [stage["name"] for stage in data["stages"]] == ["search", "slice"]
    assert read_manifest(art.path).to_json() == text


def test_records_stay_in_pipeline_order(art):
    run_search(art)
    art.skip("validate", "no GPU")
    run_slice(art)
    art.skip("reform", "recipe has no reformation")
    assert [stage.name for stage in art.manifest.stages] == ["search", "reform", "slice", "validate"]


def test_a_stage_that_raises_is_recorded_failed_and_leaves_no_directory(art):
    with pytest.raises(ValueError, match="boom"):
        with art.stage("search", options={"pop": 8}) as st:
            (st.dir / "arch.json").write_text("half")
            raise ValueError("boom\nsecond line")
    record = art.record("search")
    assert record.status == "failed" and record.error == "ValueError: boom second line"
    assert not (art.path / "search").exists() and not leftovers(art)
    assert verify(art.path) == []


def test_a_failed_rerun_removes_the_older_stage_directory(art):
    run_search(art)
    with pytest.raises(RuntimeError):
        with art.stage("search"):
            raise RuntimeError("out of memory")
    assert art.record("search").status == "failed"
    assert not (art.path / "search").exists() and not leftovers(art)


def test_rerun_replaces_the_old_stage_directory(art):
    with art.stage("search") as st:
        (st.dir / "arch.json").write_text("old")
        (st.dir / "only-in-old.txt").write_text("stale")
    run_search(art, b"new")
    assert sorted(p.name for p in (art.path / "search").iterdir()) == ["arch.json"]
    assert (art.path / "search/arch.json").read_bytes() == b"new"
    assert set(art.record("search").outputs) == {"search/arch.json"}
    assert not leftovers(art) and verify(art.path) == []


def test_interrupt_on_first_run_leaves_nothing_that_looks_complete(art):
    with pytest.raises(KeyboardInterrupt):
        with art.stage("search") as st:
            (st.dir / "arch.json").write_text("{}")
            raise KeyboardInterrupt
    assert art.record("search") is None
    assert not (art.path / "search").exists() and not leftovers(art)
    assert not art.is_current("search")


def test_interrupt_on_rerun_keeps_the_previous_complete_result(art):
    run_search(art)
    with pytest.raises(KeyboardInterrupt):
        with art.stage("search", options={"pop": 99}) as st:
            (st.dir / "arch.json").write_text("partial")
            raise KeyboardInterrupt
    assert art.is_current("search") and not art.is_current("search", {"pop": 99})
    assert (art.path / "search/arch.json").read_bytes() == b'{"layers": 4}'
    assert not leftovers(art) and verify(art.path) == []


def test_interrupt_while_swapping_directories_leaves_no_done_record(art, monkeypatch):
    run_search(art)
    calls = []
    real_write = store.write_manifest

    def interrupted_write(path, manifest):
        calls.append(manifest)
        if len(calls) == 2:  # the write that would record the new result as done
            raise KeyboardInterrupt
        real_write(path, manifest)

    monkeypatch.setattr(store, "write_manifest", interrupted_write)
    with pytest.raises(KeyboardInterrupt):
        run_search(art, b"new")
    monkeypatch.undo()
    assert art.record("search") is None and not art.is_current("search")
    assert any("search/" in problem for problem in verify(art.path))


def test_stale_temp_dirs_are_removed_when_the_artifact_is_opened(art):
    run_search(art)
    for name in (".tmp-slice-dead0001", ".tmp-replaced-search-dead0002"):
        (art.path / name).mkdir()
        (art.path / name / "model.safetensors").write_bytes(b"x" * 100)
    (art.path / ".tmp-manifest-dead0003.json").write_text("{")
    reopened = Artifact.open(art.path)
    assert not leftovers(reopened)
    assert reopened.is_current("search") and verify(art.path) == []


def test_opening_during_a_running_stage_does_not_touch_its_temp_dir(art):
    with art.stage("search") as st:
        (st.dir / "arch.json").write_text("{}")
        other = Artifact.open(art.path)  # e.g. `sculpt inspect` from another shell
        assert st.dir.is_dir()
        with pytest.raises(SculptError, match="being written"):
            other.skip("reform", "no reformation")
    assert art.record("search").status == "done"


def test_skip_records_the_reason_and_removes_an_older_directory(art):
    run_search(art)
    record = art.skip("search", "arch given by the recipe", options={"pop": 8})
    assert (record.status, record.reason) == ("skipped", "arch given by the recipe")
    assert art.record("search").options == {"pop": 8}
    assert not (art.path / "search").exists()


def test_inputs_must_be_outputs_of_a_completed_stage(art):
    with pytest.raises(SculptError, match="run the stage that writes it"):
        run_slice(art)
    assert art.record("slice").status == "failed" and not leftovers(art)
    with pytest.raises(SculptError, match="outside the artifact"):
        with art.stage("slice", inputs=[art.path.parent]):
            pass


def test_inputs_changed_behind_the_manifest_are_refused(art):
    run_search(art)
    flip_byte(art.path / "search/arch.json")
    with pytest.raises(SculptError, match="changed since search wrote it"):
        run_slice(art)


def test_metrics_accept_scalars_and_keep_non_finite_values_readable(art):
    with art.stage("search") as st:
        st.metrics.update(ppl=float("inf"), layers=4, note="ok", per_layer=[0.5, 0.25])
    assert art.record("search").metrics == {"ppl": "inf", "layers": 4, "note": "ok", "per_layer": [0.5, 0.25]}


def test_symlinks_in_a_stage_fail_it(art):
    with pytest.raises(SculptError, match="symlink"):
        with art.stage("search") as st:
            (st.dir / "arch.json").symlink_to(art.path / "manifest.json")
    assert art.record("search").status == "failed" and not leftovers(art)


# --- resume ------------------------------------------------------------------------------------------------------

def test_is_current_when_nothing_changed(art):
    run_search(art, pop=8)
    run_slice(art, rank=2)
    assert art.is_current("search", {"pop": 8})
    assert art.is_current("slice", {"rank": 2}, ["search/arch.json"])
    assert art.is_current("slice", {"rank": 2}, [art.path / "search"])  # a directory stands for its files
    assert not art.is_current("export")


def test_is_current_false_for_changed_options(art):
    run_search(art, pop=8)
    assert not art.is_current("search", {"pop": 16})
    assert not art.is_current("search", {})


def test_is_current_false_for_changed_input(art):
    run_search(art)
    run_slice(art)
    run_search(art, b'{"layers": 3}')
    assert not art.is_current("slice", {}, ["search/arch.json"])


def test_is_current_false_for_tampered_output(art):
    run_search(art)
    run_slice(art)
    flip_byte(art.path / "slice/model/model.safetensors")
    assert not art.is_current("slice", {}, ["search/arch.json"])


def test_is_current_false_for_missing_or_extra_output(art):
    run_search(art)
    (art.path / "search/extra.txt").write_text("x")
    assert not art.is_current("search")
    (art.path / "search/extra.txt").unlink()
    (art.path / "search/arch.json").unlink()
    assert not art.is_current("search")


# --- verify ------------------------------------------------------------------------------------------------------

def test_verify_passes_an_intact_artifact(art):
    run_search(art)
    run_slice(art)
    assert verify(art.path) == []


def test_verify_catches_a_flipped_byte(art):
    run_search(art)
    run_slice(art)
    flip_byte(art.path / "slice/model/model.safetensors")
    problems = verify(art.path)
    assert len(problems) == 1 and "slice/model/model.safetensors" in problems[0] and "changed" in problems[0]


def test_verify_catches_a_missing_file(art):
    run_search(art)
    run_slice(art)
    (art.path / "slice/model/config.json").unlink()
    assert verify(art.path) == ["slice/model/config.json: missing (stage slice wrote it)"]


def test_verify_catches_an_extra_file(art):
    run_search(art)
    (art.path / "search/notes.txt").write_text("added later")
    problems = verify(art.path)
    assert len(problems) == 1 and "search/notes.txt" in problems[0] and "extra" in problems[0]


def test_verify_catches_a_corrupted_manifest(art):
    run_search(art)
    path = art.path / "manifest.json"
    path.write_text(path.read_text()[:-40])
    problems = verify(art.path)
    assert len(problems) == 1 and "manifest.json" in problems[0] and "not valid JSON" in problems[0]


def test_verify_catches_wrong_schema_and_edited_records(art):
    run_search(art)
    path = art.path / "manifest.json"
    data = json.loads(path.read_text())
    data["stages"][0]["outputs"]["search/arch.json"]["sha256"] = "0" * 64
    path.write_text(json.dumps(data))
    assert any("content_hash" in problem for problem in verify(art.path))
    data["schema"] = "someone-else/manifest"
    path.write_text(json.dumps(data))
    assert len(verify(art.path)) == 1 and "not an llm-sculpt manifest" in verify(art.path)[0]


def test_verify_flags_a_stage_built_from_outputs_that_changed_since(art):
    run_search(art)
    run_slice(art)
    run_search(art, b'{"layers": 2}')
    assert verify(art.path) == ["stage slice: its input search/arch.json changed or is gone since it ran: "
                                "re-run slice"]


def test_verify_reports_a_directory_that_is_not_an_artifact(tmp_path):
    problems = verify(tmp_path)
    assert len(problems) == 1 and "not an llm-sculpt artifact" in problems[0]


# --- manifest ----------------------------------------------------------------------------------------------------

def test_content_hash_follows_the_outputs(art):
    empty = art.manifest.content_hash
    run_search(art)
    first = art.manifest.content_hash
    run_search(art)
    assert art.manifest.content_hash == first != empty
    run_search(art, b"changed")
    assert art.manifest.content_hash != first


def test_content_hash_is_the_documented_sha256sum_listing(art):
    run_search(art)
    run_slice(art)
    files = sorted(p.relative_to(art.path).as_posix() for stage in ("search", "slice")
                   for p in (art.path / stage).rglob("*") if p.is_file())
    lines = "".join(f"{hashlib.sha256((art.path / name).read_bytes()).hexdigest()}  {name}\n" for name in files)
    assert art.manifest.content_hash == hashlib.sha256(lines.encode()).hexdigest()


def test_opening_something_else_names_the_fix(tmp_path, art):
    with pytest.raises(SculptError, match=f"not an llm-sculpt artifact.*e.g. {art.path}"):
        Artifact.open(art.path.parent)
    data = json.loads((art.path / "manifest.json").read_text())
    data["schema_version"] = 2
    (art.path / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(SculptError, match="upgrade llm-sculpt"):
        Artifact.open(art.path)


def test_source_model_needs_an_id_and_kind(tmp_path):
    with pytest.raises(SculptError, match="source model"):
        Artifact.create(tmp_path, source={"id": "x", "kind": "ftp"})


def test_library_versions_come_from_metadata_without_importing_backends():
    manifest._installed_libraries.cache_clear()
    before = set(sys.modules)
    versions = library_versions()
    imported = {name.split(".")[0] for name in set(sys.modules) - before}
    assert {"python", "torch", "transformers", "llm-sculpt"} <= set(versions)
    assert not imported & {"torch", "transformers", "onnx", "onnxruntime", "tensorrt"}


# --- inspect -----------------------------------------------------------------------------------------------------

def test_summary_shows_source_recipe_each_stage_status_sizes_and_hash(art):
    run_search(art)
    art.skip("reform", "recipe has no reformation")
    run_slice(art, b"\x00" * (3 * 1024 * 1024))
    with pytest.raises(RuntimeError):
        with art.stage("export"):
            raise RuntimeError("opset 17 missing")
    text = summary(art.path)
    assert "HuggingFaceTB/SmolLM2-135M" in text and "calibration.corpus=wikitext2" in text
    rows = {line.split()[0]: line for line in text.splitlines() if line.startswith("  ") and line.split()}
    assert "done" in rows["search"] and "best_ppl=13.52" in rows["search"]
    assert "skipped" in rows["reform"] and "recipe has no reformation" in rows["reform"]
    assert "done" in rows["slice"] and "3.0 MiB" in rows["slice"]
    assert "failed" in rows["export"] and "RuntimeError: opset 17 missing" in rows["export"]
    assert "not run" in rows["build"] and "not run" in rows["validate"]
    assert art.manifest.content_hash in text
