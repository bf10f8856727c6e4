"""What a step's pod asks of the cluster besides its argv: CPU and memory sized from what the
step does, shared memory and scratch disk, a locked-down security context with writable volumes
only where steps write, and spot nodes on request.

A GPU node runs several pods: without requests a step is BestEffort, gets whatever CPU is left
for DALI's decoding threads and is the first evicted under memory pressure. Every step pod is
therefore Guaranteed (CPU and memory requests equal their limits, the XCom sidecar's too), sized
by ``sizing`` from the step, its GPUs, its group (bytes of tars, records of a cluster group) and
options (model, batch size). The root filesystem is read-only; the step writes only to
``/tmp`` (``HOME``), ``/scratch`` (``TMPDIR``: the local copy of a remote tar, spooled writes),
``/cache`` (annotate's weights cache and ``HF_HOME``: an ``emptyDir``, or a PVC the user names to
share it between pods), ``/dev/shm`` (annotate: an in-memory ``emptyDir``, as container runtimes
give 64 MB) and the XCom volume. Whatever the user set wins: a ``container_resources`` or pod
template entry for a resource, a volume mounted at the same path, an env var of the same name,
their own (pod or container) security context.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from airflow.providers.cncf.kubernetes.utils.xcom_sidecar import PodDefaults
from kubernetes.client import models as k8s
from kubernetes.utils.quantity import parse_quantity

from airflow_curator.core.annotate.weights import CACHE_ENV
from airflow_curator.core.groups import GROUP_BYTES

MIB = 1 << 20
GIB = 1 << 30
UID = 10001  # the image's user (images/Dockerfile)

# Steps that stream their inputs and hold little: (CPU, memory).
SMALL_STEPS: dict[str, tuple[str, int]] = {
    "discover": ("1", 2 * GIB),  # the listing and the manifest of every shard
    "index": ("1", 1 * GIB),  # tar headers, one shard at a time
    "save-metadata": ("1", 2 * GIB),  # one shard's metadata and annotations (embeddings)
    "plan-reshard": ("1", 1 * GIB),  # kept counts per shard
    "reshard": ("1", 2 * GIB),  # member bytes stream through; one output shard's Parquet
    "to-webdataset": ("1", 2 * GIB),
    "commit": ("500m", 1 * GIB),
    "report": ("1", 2 * GIB),  # histograms and thumbnails of a sample
    "dedup-fit": ("2", 4 * GIB),  # k-means on a sample of 100k embeddings (~300 MB)
    "dedup-assign": ("1", 2 * GIB),  # one shard's embeddings at a time
    "dedup-hash": ("1", 1 * GIB),
    "dedup-result": ("1", 2 * GIB),
}
DEFAULT_SMALL = ("1", 2 * GIB)

# annotate: DALI decoding threads per GPU, plus one core for the model loop and the writer.
# 4 + 1 fits a one-GPU node with 8 vCPUs (GKE g2-standard-8, one L4) next to its daemons.
DECODE_THREADS_PER_GPU = 4
# Host memory of annotate: the runtime (Python, torch, DALI, the CUDA context's host side), the
# model while it loads (checkpoint, state dict and module: ~3x its float32 parameters), and per
# GPU one batch of decoded full-size images in DALI's prefetch queue (~3 deep x ~4 MB each).
RUNTIME_MEMORY = 3 * GIB
MODEL_LOAD_COPIES = 3
IMAGE_HOST_BYTES = 12 * MIB
MODEL_PARAMS = {  # open_clip architectures (image + text towers); others count as ViT-L-14
    "RN50": 102e6,
    "ViT-B-32": 151e6,
    "ViT-B-16": 150e6,
    "ViT-L-14": 428e6,
    "ViT-L-14-336": 428e6,
    "ViT-H-14": 986e6,
    "ViT-g-14": 1367e6,
    "ViT-bigG-14": 2540e6,
}
DEFAULT_MODEL = "ViT-L-14"
SHM_PER_GPU = 1 * GIB  # torch / NCCL between processes, DALI's pinned queues
# dedup holds one cluster group's embeddings and per-cluster similarities: ~3 KB a record
# (768 float32), twice that at peak.
DEDUP_RECORD_BYTES = 3 * 1024
DEDUP_PEAK = 2
DEDUP_UNKNOWN = 4 * GIB  # a cluster group without a record estimate
BASE_MEMORY = 1 * GIB
# Disk: scratch holds a group's tars copied locally (annotate) or spooled writes (reshard),
# plus room; /tmp is small; the weights cache holds the checkpoint and heads.
SCRATCH_ROOM = 1 * GIB
TMP_SIZE = 1 * GIB
SIDECAR_RESOURCES = {"cpu": "10m", "memory": "32Mi"}

TMP, SCRATCH, CACHE, SHM = "/tmp", "/scratch", "/cache", "/dev/shm"
SPOT_LABEL = "cloud.google.com/gke-spot"  # GKE's spot node label and taint


@dataclass(frozen=True)
class Sizing:
    """What one step pod requests: cores, memory, disk (bytes)."""

    cpu: Decimal
    memory: int
    scratch: int
    shm: int = 0  # in-memory /dev/shm (counted in memory); 0: the runtime's default
    cache: int = 0  # weights cache emptyDir; 0: the step downloads no weights

    @property
    def disk(self) -> int:
        """Ephemeral storage the pod's disk-backed emptyDirs may fill."""
        return self.scratch + TMP_SIZE + self.cache


def sizing(
    step: str,
    *,
    gpus: int = 0,
    group: Mapping[str, Any] | None = None,
    options: Mapping[str, Any] | None = None,
) -> Sizing:
    """The default requests of ``step``'s pod, from what the step does with this work."""
    group, options = group or {}, options or {}
    scratch = SCRATCH_ROOM
    if step in ("annotate", "reshard"):  # local tar copies, spooled remote writes
        scratch += _int(group.get("bytes"), GROUP_BYTES)
    if step == "annotate":
        per = max(gpus, 1)
        params = MODEL_PARAMS.get(str(options.get("model") or ""), MODEL_PARAMS[DEFAULT_MODEL])
        weights = int(params * 4)
        batch = _int(options.get("batch_size"), 64)
        shm = SHM_PER_GPU * per
        memory = RUNTIME_MEMORY + MODEL_LOAD_COPIES * weights + per * batch * IMAGE_HOST_BYTES
        return Sizing(
            cpu=Decimal(DECODE_THREADS_PER_GPU * per + 1),
            memory=_round_up(memory + shm, GIB),
            scratch=_round_up(scratch, GIB),
            shm=shm,
            cache=_round_up(weights + weights // 4 + GIB, GIB),  # checkpoint, heads, room
        )
    if step == "dedup":
        records = _int(group.get("records"), 0)
        memory = (
            BASE_MEMORY + DEDUP_PEAK * records * DEDUP_RECORD_BYTES if records else DEDUP_UNKNOWN
        )
        return Sizing(cpu=Decimal(2), memory=_round_up(memory, GIB), scratch=scratch)
    cpu, memory = SMALL_STEPS.get(step, DEFAULT_SMALL)
    return Sizing(cpu=parse_quantity(cpu), memory=memory, scratch=_round_up(scratch, GIB))


def override(base: Sizing, **given: Any) -> Sizing:
    """``base`` with the user's quantities (``cpu="8"``, ``memory="32Gi"``, ...; empty: keep)."""
    values: dict[str, Any] = {}
    for name, value in given.items():
        if value in (None, ""):
            continue
        try:
            q = parse_quantity(value)
        except ValueError:
            raise ValueError(f"{name} must be a Kubernetes quantity, not {value!r}") from None
        if q < 0:
            raise ValueError(f"{name} must be >= 0, not {value!r}")
        values[name] = q if name == "cpu" else math.ceil(q)
    return Sizing(**{**base.__dict__, **values})


def quantity(n: int) -> str:
    """Bytes as Kubernetes writes them: ``9Gi``, ``512Mi``, else bytes."""
    for unit, size in (("Gi", GIB), ("Mi", MIB)):
        if n % size == 0 and n:
            return f"{n // size}{unit}"
    return str(n)


def cores(cpu: Decimal) -> str:
    """CPU as Kubernetes writes it: ``5``, ``500m``."""
    return str(int(cpu)) if cpu == int(cpu) else f"{math.ceil(cpu * 1000)}m"


def apply_resources(container: k8s.V1Container, size: Sizing) -> None:
    """CPU and memory requests equal to limits (Guaranteed), ephemeral storage requested for
    the disk volumes; a resource the user set (request or limit) is left as they set it."""
    res = container.resources or k8s.V1ResourceRequirements()
    requests, limits = dict(res.requests or {}), dict(res.limits or {})
    user = set(requests) | set(limits)
    for name, value in (("cpu", cores(size.cpu)), ("memory", quantity(size.memory))):
        if name not in user:
            requests[name] = limits[name] = value
    if "ephemeral-storage" not in user:
        requests["ephemeral-storage"] = quantity(size.disk)
    container.resources = k8s.V1ResourceRequirements(
        requests=requests, limits=limits, claims=res.claims
    )


def apply_sidecar(pod: k8s.V1Pod) -> None:
    """The XCom sidecar gets limits (so the pod stays Guaranteed) and the locked-down context,
    unless the connection gave it its own."""
    for c in pod.spec.containers:
        if c.name != PodDefaults.SIDECAR_CONTAINER_NAME:
            continue
        if c.resources == PodDefaults.SIDECAR_CONTAINER.resources:
            c.resources = k8s.V1ResourceRequirements(
                requests=dict(SIDECAR_RESOURCES), limits=dict(SIDECAR_RESOURCES)
            )
        if _unset(c.security_context):
            c.security_context = container_security()


def apply_volumes(
    pod: k8s.V1Pod, container: k8s.V1Container, size: Sizing, cache_claim: str | None = None
) -> None:
    """The writable volumes the step needs, and the env that points it at them; a path the
    user already mounts, or an env var they set, is theirs."""
    volumes: list[tuple[str, str, k8s.V1Volume]] = [
        (TMP, "curator-tmp", _empty_dir("curator-tmp", TMP_SIZE)),
        (SCRATCH, "curator-scratch", _empty_dir("curator-scratch", size.scratch)),
    ]
    env = {"HOME": TMP, "TMPDIR": SCRATCH}
    if size.shm:
        volumes.append((SHM, "curator-shm", _empty_dir("curator-shm", size.shm, "Memory")))
    if size.cache or cache_claim:
        volume = (
            k8s.V1Volume(
                name="curator-cache",
                persistent_volume_claim=k8s.V1PersistentVolumeClaimVolumeSource(
                    claim_name=cache_claim
                ),
            )
            if cache_claim
            else _empty_dir("curator-cache", size.cache)
        )
        volumes.append((CACHE, "curator-cache", volume))
        env.update({CACHE_ENV: f"{CACHE}/weights", "HF_HOME": f"{CACHE}/hf"})
    mounts = list(container.volume_mounts or [])
    taken = {m.mount_path.rstrip("/") for m in mounts}
    names = {v.name for v in pod.spec.volumes or []}
    spec_volumes = list(pod.spec.volumes or [])
    for path, name, volume in volumes:
        if path in taken or name in names:
            continue
        spec_volumes.append(volume)
        mounts.append(k8s.V1VolumeMount(name=name, mount_path=path))
    pod.spec.volumes = spec_volumes
    container.volume_mounts = mounts
    have = {e.name for e in container.env or []}
    container.env = [
        *(container.env or []),
        *(k8s.V1EnvVar(name=k, value=v) for k, v in env.items() if k not in have),
    ]


def container_security() -> k8s.V1SecurityContext:
    return k8s.V1SecurityContext(
        run_as_non_root=True,
        run_as_user=UID,
        run_as_group=UID,
        allow_privilege_escalation=False,
        privileged=False,
        read_only_root_filesystem=True,
        capabilities=k8s.V1Capabilities(drop=["ALL"]),
        seccomp_profile=k8s.V1SeccompProfile(type="RuntimeDefault"),
    )


def apply_security(pod: k8s.V1Pod, container: k8s.V1Container) -> None:
    """Non-root uid 10001 with ``fsGroup`` (a user's PVC becomes writable to it), no
    capabilities, no privilege escalation, a read-only root: Kubernetes' "restricted" pod
    security standard. A context the user gave (argument or pod template) is kept as is."""
    if _unset(pod.spec.security_context):
        pod.spec.security_context = k8s.V1PodSecurityContext(
            run_as_non_root=True,
            run_as_user=UID,
            run_as_group=UID,
            fs_group=UID,
            fs_group_change_policy="OnRootMismatch",  # a large PVC is not re-chowned each start
            seccomp_profile=k8s.V1SeccompProfile(type="RuntimeDefault"),
        )
    if _unset(container.security_context):
        container.security_context = container_security()


def apply_spot(pod: k8s.V1Pod) -> None:
    """GKE spot nodes: their node selector and a toleration of their taint."""
    pod.spec.node_selector = {**(pod.spec.node_selector or {}), SPOT_LABEL: "true"}
    tolerations = list(pod.spec.tolerations or [])
    if not any(t.key == SPOT_LABEL for t in tolerations):
        tolerations.append(
            k8s.V1Toleration(key=SPOT_LABEL, operator="Equal", value="true", effect="NoSchedule")
        )
    pod.spec.tolerations = tolerations


def _empty_dir(name: str, size: int, medium: str | None = None) -> k8s.V1Volume:
    return k8s.V1Volume(
        name=name, empty_dir=k8s.V1EmptyDirVolumeSource(medium=medium, size_limit=quantity(size))
    )


def _unset(obj: Any) -> bool:
    if obj is None:
        return True
    if isinstance(obj, Mapping):
        return not any(v is not None for v in obj.values())
    return not any(v is not None for v in obj.to_dict().values())


def _int(value: Any, default: int) -> int:
    try:
        return int(value) if value not in (None, "") else default
    except (TypeError, ValueError):
        return default


def _round_up(n: int, unit: int) -> int:
    return max(unit, -(-int(n) // unit) * unit)
