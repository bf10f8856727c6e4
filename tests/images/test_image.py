"""The runtime image installs exactly the runtime extra (so the test suite covers what pods run)
and runs the CLI as a non-root entrypoint."""

from __future__ import annotations

import json
import os
import re
import sys
from importlib.metadata import PackageNotFoundError, version

import pytest
from packaging.requirements import Requirement

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = pytest.importorskip("tomli")

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
IMAGES = os.path.join(REPO, "images")


def pyproject() -> dict:
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)


def image_requirements() -> list[str]:
    with open(os.path.join(IMAGES, "requirements.txt")) as f:
        lines = [line.split("#")[0].strip() for line in f]
    return [line for line in lines if line]


def canonical(reqs) -> set[str]:
    return {str(Requirement(r)).lower().replace("_", "-") for r in reqs}


def test_requirements_are_the_runtime_extra_and_base_without_airflow():
    project = pyproject()["project"]
    runtime = project["optional-dependencies"]["runtime"]
    base = [r for r in project["dependencies"] if not Requirement(r).name.startswith("apache-")]
    assert canonical(image_requirements()) == canonical(runtime) | canonical(base)


def test_every_image_requirement_is_installed_here():
    for line in image_requirements():
        req = Requirement(line)
        try:
            installed = version(req.name)
        except PackageNotFoundError:
            pytest.fail(f"{req.name} (images/requirements.txt) is not installed")
        assert req.specifier.contains(installed, prereleases=True), (line, installed)


def test_dockerfile_entrypoint_user_and_inputs():
    with open(os.path.join(IMAGES, "Dockerfile")) as f:
        text = f.read()
    entry = re.search(r"^ENTRYPOINT (.+)$", text, re.M)
    assert entry and json.loads(entry.group(1)) == ["airflow-curator"]
    assert "airflow-curator" in pyproject()["project"]["scripts"]
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert "COPY images/requirements.txt" in text
    assert re.search(r"^ARG BAKE_MODEL", text, re.M)
    assert re.search(r"^FROM \$\{CUDA_IMAGE\}", text, re.M)
    assert re.search(r"^ARG CUDA_IMAGE=nvidia/cuda:\S+", text, re.M)
