"""The pods' writable volumes are enough: the whole job runs in local mode with the layout a pod
has: a read-only root filesystem (a private mount namespace remounts ``/`` read-only, so the
package, the interpreter, the input dataset and the working directory are not writable) with
local folders standing in for the pod's volumes mounted writable, and ``HOME``, ``TMPDIR``, the
weights cache, ``HF_HOME``, the termination log and the XCom result taken from the rendered pods
and pointed at them. Annotate downloads its weights over HTTP into the cache volume."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from airflow_curator.operators import (
    CommitOperator,
    GpuAnnotateOperator,
    IndexShardsOperator,
    PlanReshardOperator,
    ReshardOperator,
    SaveMetadataOperator,
    ShardDiscoveryOperator,
)
from airflow_curator.operators.local import local_command
from airflow_curator.operators.pod import UID

pytestmark = [pytest.mark.slow, pytest.mark.integration]
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# Run a command with / read-only but for the folders given before "--", in a private mount
# namespace (nothing changes outside it).
READ_ONLY_ROOT = (
    'while [ "$1" != -- ]; do mount --bind "$1" "$1" || exit 97; shift; done; shift; '
    'mount -o remount,bind,ro / || exit 97; exec "$@"'
)


def read_only_root(writable: list[str], cmd: list[str]) -> list[str]:
    unshare = ["unshare", "--mount", "--propagation", "private"]
    return [*unshare, "sh", "-c", READ_ONLY_ROOT, "sh", *writable, "--", *cmd]


@pytest.fixture
def root(tmp_path):
    if not shutil.which("unshare"):
        pytest.skip("needs unshare (util-linux) for a read-only root filesystem")
    probe = subprocess.run(read_only_root([], ["true"]), capture_output=True, check=False)
    if probe.returncode != 0:
        pytest.skip(f"cannot make a private read-only mount namespace: {probe.stderr!r}")
    return str(tmp_path)


class Pod:
    """One rendered pod's argv and environment, its volumes mapped to local folders."""

    def __init__(self, op, base: str) -> None:
        pod = op.build_pod_request_obj(dry_run=True)
        (c,) = [c for c in pod.spec.containers if c.name == op.base_container_name]
        assert pod.spec.security_context.run_as_user == UID
        assert c.security_context.read_only_root_filesystem
        volumes = os.path.join(base, "volumes")
        self.volumes = {m.mount_path: os.path.join(volumes, m.name) for m in c.volume_mounts}
        # the kubelet mounts the termination log file, writable, even on a read-only root
        self.volumes["/dev/termination-log"] = os.path.join(volumes, "termination")
        for folder in self.volumes.values():
            os.makedirs(folder, exist_ok=True)
        self.termination = os.path.join(volumes, "termination", "log")
        self.env = {e.name: self.local(e.value) for e in c.env if e.value is not None}
        self.args = [*c.args[:-1], self.local(c.args[-1])]  # ... --result-json <xcom>/return.json
        self.result = self.args[-1]

    def local(self, value: str) -> str:
        if value == "/dev/termination-log":
            return self.termination
        for path, folder in self.volumes.items():
            if value == path or value.startswith(path + "/"):
                return folder + value[len(path) :]
        return value

    def run(self, cwd: str, storage: list[str]) -> dict:
        env = {
            "PATH": os.environ["PATH"],
            "PYTHONPATH": REPO,
            "HF_HUB_OFFLINE": "1",
            "LANG": "C.UTF-8",
            **self.env,
        }
        keys = ["HOME", "TMPDIR"] + (
            ["CURATOR_WEIGHTS_CACHE", "HF_HOME"] if "/cache" in self.volumes else []
        )
        for key in keys:
            assert any(env[key].startswith(v) for v in self.volumes.values()), key
        proc = subprocess.run(
            read_only_root([*self.volumes.values(), *storage], local_command(self.args)),
            env=env,
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert proc.returncode == 0, (self.args[0], proc.stdout[-3000:], proc.stderr[-3000:])
        with open(self.result) as f:
            return json.load(f)


def test_every_step_runs_with_only_the_pods_writable_volumes(root):
    from airflow_curator.testing.dataset import write_demo_dataset
    from airflow_curator.testing.http import serve_folder
    from airflow_curator.testing.models import write_tiny_models

    dataset, out, mirror = (os.path.join(root, d) for d in ("dataset", "out", "mirror"))
    write_demo_dataset(dataset, shards=2, records_per_shard=6, seed=3)
    os.makedirs(out)
    tiny = write_tiny_models(mirror)
    package = os.path.join(REPO, "airflow_curator")
    probe = [sys.executable, "-c", "open(__import__('sys').argv[1] + '/probe', 'w')", package]
    denied = subprocess.run(read_only_root([out], probe), capture_output=True, text=True)
    assert "Read-only file system" in denied.stderr  # the premise: the package is not writable

    common = {"dataset": dataset, "output_uri": out, "execution": "kubernetes"}
    with serve_folder(mirror) as mirror_server:

        def url(path: str) -> str:
            return f"{mirror_server.url}/{os.path.basename(path)}"

        annotate_options = {
            "model": tiny["model"],
            "weights": url(tiny["weights"]),
            "weights_sha256": tiny["sha256"][tiny["weights"]],
            "aesthetic_weights": url(tiny["aesthetic_weights"]),
            "nsfw_weights": url(tiny["nsfw_weights"]),
            "device": "cpu",
            "batch_size": 4,
        }
        results = {}

        def run(op) -> dict:
            pod = Pod(op, os.path.join(root, op.task_id))
            # the dataset and the output are the job's storage (a bucket, for a pod): index
            # writes .idx files next to the shards
            results[op.step] = result = pod.run(cwd=root, storage=[dataset, out])
            if op.step == "annotate":
                cache = pod.local("/cache")
                fetched = [f for _, _, files in os.walk(cache) for f in files]
                assert "tiny-clip.pt" in fetched  # downloaded into the cache volume
            return result

        groups = run(ShardDiscoveryOperator(task_id="discover", **common))["groups"]
        assert groups
        for i, group in enumerate(groups):
            for cls, extra in (
                (IndexShardsOperator, {}),
                (GpuAnnotateOperator, {"options": annotate_options, "gpus": 0}),
                (SaveMetadataOperator, {}),
            ):
                run(cls(task_id=f"{cls.step}_{i}", group=group, **common, **extra))
        assert mirror_server.requests  # the weights came over HTTP
    plan = run(PlanReshardOperator(task_id="plan", **common))
    for i, group in enumerate(plan["groups"]):
        run(ReshardOperator(task_id=f"reshard_{i}", group=group, **common))
    run(CommitOperator(task_id="commit", **common))
    assert results["annotate"]["records"] > 0 and results["commit"]
    assert os.path.exists(os.path.join(out, "_SUCCESS"))
