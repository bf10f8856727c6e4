"""Pods rendered offline (``build_pod_request_obj(dry_run=True)``) and validated strictly against
the Kubernetes schemas: arguments, GPU limits, tolerations, the XCom sidecar, pod templates."""

from __future__ import annotations

import copy

import kubernetes_validate
import pytest
from airflow.sdk.exceptions import AirflowFailException
from kubernetes.client import ApiClient
from kubernetes.client import models as k8s

from airflow_curator.operators import (
    CommitOperator,
    GpuAnnotateOperator,
    IndexShardsOperator,
    PlanReshardOperator,
    ReshardOperator,
    SaveMetadataOperator,
    ShardDiscoveryOperator,
)
from airflow_curator.operators.base import GPU_RESOURCE, XCOM_RESULT, default_image
from airflow_curator.operators.local import LocalRunner, local_command
from airflow_curator.runtime.registry import step_parser

K8S_VERSION = kubernetes_validate.latest_version()
GROUP = {"shards": "4-7", "label": "00004-00007", "count": 4}
OUTPUT_GROUP = {"outputs": "0-1", "label": "00000-00001", "count": 2}

CASES = {
    "discover": (ShardDiscoveryOperator, {"options": {"group_bytes": 1 << 30}}),
    "index": (IndexShardsOperator, {"group": GROUP}),
    "annotate": (
        GpuAnnotateOperator,
        {"group": GROUP, "options": {"model": "ViT-L-14", "batch_size": 128}},
    ),
    "save-metadata": (
        SaveMetadataOperator,
        {"group": GROUP, "options": {"min_clip_score": 0.2, "max_nsfw": 0.5}},
    ),
    "plan-reshard": (PlanReshardOperator, {"options": {"samples_per_shard": 5000}}),
    "reshard": (ReshardOperator, {"group": OUTPUT_GROUP}),
    "commit": (CommitOperator, {}),
}


def make(step: str, **kwargs):
    cls, extra = CASES[step]
    args = {
        "task_id": step.replace("-", "_"),
        "dataset": "gs://bucket/drops/2026-03-01",
        "output_uri": "gs://bucket/curated/2026-03-01",
        "execution": "kubernetes",
        "namespace": "curation",
        **copy.deepcopy(extra),
        **kwargs,
    }
    return cls(**args)


def manifest(op) -> dict:
    pod = op.build_pod_request_obj(None, dry_run=True)
    return ApiClient().sanitize_for_serialization(pod)


def validate(m: dict) -> None:
    kubernetes_validate.validate(m, desired_version=K8S_VERSION, strict=True)


def base_container(m: dict) -> dict:
    return next(c for c in m["spec"]["containers"] if c["name"] == "base")


@pytest.mark.parametrize("step", list(CASES))
def test_every_operator_renders_a_valid_pod(step):
    op = make(step)
    m = manifest(op)
    validate(m)
    c = base_container(m)
    assert c["args"] == op.argv(result_json=XCOM_RESULT)
    assert c["args"][0] == step and c["args"][-2:] == ["--result-json", XCOM_RESULT]
    assert not c.get("command")  # the image's entrypoint is airflow-curator
    assert c["image"] == default_image()
    step_parser(step).parse_args(c["args"][1:])  # a complete, valid command line
    sidecar = [x for x in m["spec"]["containers"] if x["name"] == "airflow-xcom-sidecar"]
    assert len(sidecar) == 1
    assert {"name": "xcom", "mountPath": "/airflow/xcom"} in c["volumeMounts"]
    assert m["metadata"]["labels"]["airflow-curator/step"] == step
    assert m["metadata"]["namespace"] == "curation"
    gpu = (c.get("resources") or {}).get("limits", {}).get(GPU_RESOURCE)
    assert gpu == ("1" if step == "annotate" else None)


@pytest.mark.parametrize("step", ["index", "annotate", "reshard"])
def test_pod_arguments_equal_the_local_argv(step, monkeypatch):
    seen = []

    def fake_run(self, argv, env=None, result_json=None):
        seen.append(list(argv))
        return {"ok": True}

    monkeypatch.setattr(LocalRunner, "run", fake_run)
    pod_args = base_container(manifest(make(step)))["args"]
    local = make(step, execution="local")
    assert local.execute({}) == {"ok": True}
    assert seen == [pod_args[:-2]]
    assert "--shards" in pod_args or "--outputs" in pod_args
    cmd = local_command(seen[0])
    assert cmd[1:3] == ["-m", "airflow_curator.runtime.cli"] and cmd[3:] == seen[0]


def test_gpu_pod_takes_the_usual_pod_arguments():
    op = make(
        "annotate",
        gpus=2,
        node_selector={"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"},
        tolerations=[k8s.V1Toleration(key="dedicated", value="curation", effect="NoSchedule")],
        container_resources=k8s.V1ResourceRequirements(
            requests={"cpu": "8", "memory": "32Gi"}, limits={"memory": "48Gi"}
        ),
        service_account_name="curator",
        image="registry.example.com/curator-runtime:0.1.0",
        image_pull_policy="Always",
    )
    m = manifest(op)
    validate(m)
    c, spec = base_container(m), m["spec"]
    # the user's CPU and memory win, as they set them (no CPU limit added to a CPU request)
    assert c["resources"]["limits"] == {"memory": "48Gi", GPU_RESOURCE: "2"}
    requests = c["resources"]["requests"]
    assert (requests["cpu"], requests["memory"]) == ("8", "32Gi")
    assert "ephemeral-storage" in requests  # they set none: the scratch default stays
    keys = [t["key"] for t in spec["tolerations"]]
    assert keys == ["dedicated", GPU_RESOURCE]
    assert spec["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"}
    assert spec["serviceAccountName"] == "curator"
    assert c["image"] == "registry.example.com/curator-runtime:0.1.0"
    assert c["imagePullPolicy"] == "Always"
    # the user's resources object is not modified
    assert GPU_RESOURCE not in op.container_resources.limits
    # room for a GPU node to be autoscaled and a large image pulled
    assert op.startup_timeout_seconds >= 1200 and op.schedule_timeout_seconds >= 1800


def test_gpu_toleration_not_duplicated_and_gpus_zero_means_cpu():
    own = k8s.V1Toleration(key=GPU_RESOURCE, operator="Equal", value="present", effect="NoSchedule")
    m = manifest(make("annotate", tolerations=[own]))
    assert [t["key"] for t in m["spec"]["tolerations"]] == [GPU_RESOURCE]
    assert m["spec"]["tolerations"][0]["value"] == "present"
    cpu = manifest(make("annotate", gpus="0"))  # templated params arrive as text
    assert GPU_RESOURCE not in base_container(cpu)["resources"]["limits"]
    assert not cpu["spec"].get("tolerations")


def test_cpu_steps_ask_for_no_gpu():
    m = manifest(make("index"))
    assert not m["spec"].get("tolerations")
    assert GPU_RESOURCE not in str(m)


def test_building_the_pod_twice_gives_the_same_pod():
    op = make(
        "annotate",
        env_vars={"CURATOR_LOG": "debug"},
        pod_runtime_info_envs=[
            k8s.V1EnvVar(
                name="POD_NAME",
                value_from=k8s.V1EnvVarSource(
                    field_ref=k8s.V1ObjectFieldSelector(field_path="metadata.name")
                ),
            )
        ],
    )
    first, second = manifest(op), manifest(op)
    first["metadata"].pop("name"), second["metadata"].pop("name")
    assert first == second
    env = base_container(second)["env"]
    assert [e["name"] for e in env][:3] == ["CURATOR_LOG", "POD_NAME", "CURATOR_TERMINATION_LOG"]
    validate(second)


def test_pod_template_file_is_the_base(tmp_path):
    template = tmp_path / "pod.yaml"
    template.write_text(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  labels:\n    team: data\nspec:\n"
        "  priorityClassName: batch-low\n"
        "  volumes:\n  - name: models\n    persistentVolumeClaim:\n      claimName: clip-weights\n"
        "  containers:\n  - name: base\n    volumeMounts:\n    - name: models\n"
        "      mountPath: /models\n      readOnly: true\n"
    )
    m = manifest(make("annotate", pod_template_file=str(template)))
    validate(m)
    c = base_container(m)
    assert m["metadata"]["labels"]["team"] == "data"
    assert m["spec"]["priorityClassName"] == "batch-low"
    assert {"name": "models", "mountPath": "/models", "readOnly": True} in c["volumeMounts"]
    assert c["args"][0] == "annotate" and c["resources"]["limits"][GPU_RESOURCE] == "1"


def test_template_fields_render_uris_and_options():
    op = make(
        "save-metadata",
        dataset="{{ params.root }}/drops/{{ ds }}",
        output_uri="{{ params.root }}/curated/{{ ds }}",
        options={"min_clip_score": "{{ params.min_clip }}", "filter_column": "keep"},
    )
    for field in ("dataset", "output_uri", "options", "group", "execution"):
        assert field in op.template_fields
    op.render_template_fields({"params": {"root": "gs://b", "min_clip": 0.25}, "ds": "2026-03-01"})
    argv = op.argv()
    assert argv[argv.index("--dataset") + 1] == "gs://b/drops/2026-03-01"
    assert argv[argv.index("--path") + 1] == "gs://b/curated/2026-03-01/_work/metadata"
    assert argv[argv.index("--min-clip-score") + 1] == "0.25"
    assert argv[argv.index("--filter-column") + 1] == "keep"


def test_operators_map_over_groups():
    from airflow.sdk import DAG

    with DAG("mapping", schedule=None) as dag:
        GpuAnnotateOperator.partial(
            task_id="annotate",
            dataset="gs://b/d",
            output_uri="gs://b/o",
            gpus=2,
            namespace="curation",
            options={"model": "ViT-B-32"},
        ).expand(group=[GROUP, {"shards": "8-9", "label": "00008-00009"}])
    mapped = dag.get_task("annotate")
    assert mapped.partial_kwargs["gpus"] == 2
    assert mapped.expand_input.value["group"][1]["shards"] == "8-9"


# -- what each pod asks of the cluster (operators.pod) ---------------------------------------

WRITABLE = {"/tmp", "/scratch", "/airflow/xcom"}  # every step; annotate adds /cache, /dev/shm


def q(text: str) -> int:
    from kubernetes.utils.quantity import parse_quantity

    return int(parse_quantity(text))


def volumes(m: dict) -> dict:
    """mount path -> the pod's volume mounted there (base container)."""
    by_name = {v["name"]: v for v in m["spec"]["volumes"]}
    return {x["mountPath"]: by_name[x["name"]] for x in base_container(m)["volumeMounts"]}


@pytest.mark.parametrize("step", list(CASES))
def test_every_step_pod_is_guaranteed_locked_down_and_valid(step):
    m = manifest(make(step))
    validate(m)
    c, spec = base_container(m), m["spec"]
    res = c["resources"]
    # Guaranteed QoS: CPU and memory requests equal limits, in every container
    for container in spec["containers"]:
        r = container["resources"]
        for name in ("cpu", "memory"):
            assert r["requests"][name] == r["limits"][name], (container["name"], name)
    assert q(res["requests"]["memory"]) >= 1 << 30
    # the disk volumes fit in the requested ephemeral storage
    mounted = volumes(m)
    disk = sum(q(v["emptyDir"]["sizeLimit"]) for v in mounted.values() if "sizeLimit" in
               v.get("emptyDir", {}) and v["emptyDir"].get("medium") != "Memory")  # fmt: skip
    assert q(res["requests"]["ephemeral-storage"]) == disk
    # writable volumes only where steps write; the root filesystem is read-only
    assert set(mounted) == WRITABLE | ({"/cache", "/dev/shm"} if step == "annotate" else set())
    assert all("emptyDir" in v for v in mounted.values())
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert (env["HOME"], env["TMPDIR"]) == ("/tmp", "/scratch")
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]} and sc["runAsNonRoot"] is True
    pod_sc = spec["securityContext"]
    assert (pod_sc["runAsUser"], pod_sc["runAsGroup"], pod_sc["fsGroup"]) == (10001,) * 3
    assert pod_sc["runAsNonRoot"] is True
    (sidecar,) = [x for x in spec["containers"] if x["name"] == "airflow-xcom-sidecar"]
    assert sidecar["securityContext"]["readOnlyRootFilesystem"] is True
    assert sidecar["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert "cloud.google.com/gke-spot" not in str(m)  # spot is opt-in


def test_annotate_gets_shm_cache_and_resources_from_its_work():
    m = manifest(make("annotate"))
    mounted = volumes(m)
    shm = mounted["/dev/shm"]["emptyDir"]
    assert shm["medium"] == "Memory" and q(shm["sizeLimit"]) >= 1 << 30  # not the 64 MB default
    env = {e["name"]: e.get("value") for e in base_container(m)["env"]}
    assert env["CURATOR_WEIGHTS_CACHE"].startswith("/cache/") and env["HF_HOME"] == "/cache/hf"
    res = base_container(m)["resources"]["limits"]
    # the in-memory /dev/shm counts against the memory limit, so the limit holds it
    assert q(res["memory"]) > q(shm["sizeLimit"]) + 3 * (1 << 30)

    def limits(**kwargs):
        r = base_container(manifest(make("annotate", **kwargs)))["resources"]["limits"]
        return q(r["cpu"]), q(r["memory"])

    one, two = limits(), limits(gpus=2)
    assert two[0] > one[0] and two[1] > one[1]  # decoding threads and batches per GPU
    small = limits(options={"model": "ViT-B-32", "batch_size": 16})
    big = limits(options={"model": "ViT-bigG-14", "batch_size": 512})
    assert small[1] < one[1] < big[1]  # the model and the batches live in host memory
    # the scratch volume holds the group's tars copied locally, whatever their size
    group = {**GROUP, "bytes": 20 << 30}
    scratch = volumes(manifest(make("annotate", group=group)))["/scratch"]["emptyDir"]
    assert q(scratch["sizeLimit"]) >= 20 << 30
    small_group = volumes(manifest(make("annotate", group={**GROUP, "bytes": 1 << 20})))
    assert q(small_group["/scratch"]["emptyDir"]["sizeLimit"]) < 20 << 30


def test_dedup_memory_follows_the_cluster_groups_records():
    from airflow_curator.operators import SemanticDedupOperator

    def memory(group):
        op = SemanticDedupOperator(
            task_id="dedup", output_uri="gs://b/o", execution="kubernetes", group=group
        )
        return q(base_container(manifest(op))["resources"]["limits"]["memory"])

    clusters = {"clusters": "0-62", "label": "00000-00062", "count": 63}
    few, many = memory({**clusters, "records": 10_000}), memory({**clusters, "records": 2_000_000})
    assert many >= 2_000_000 * 3 * 1024 > few  # ~3 KB a record (768 float32 embeddings)
    assert memory(clusters) >= 1 << 30  # an older dedup-fit's groups carry no estimate


def test_operator_arguments_override_the_sized_defaults():
    m = manifest(make("annotate", cpu="12", memory="48Gi", scratch="200Gi", shm="4Gi"))
    validate(m)
    res = base_container(m)["resources"]
    assert res["requests"]["cpu"] == res["limits"]["cpu"] == "12"
    assert res["requests"]["memory"] == res["limits"]["memory"] == "48Gi"
    mounted = volumes(m)
    assert mounted["/scratch"]["emptyDir"]["sizeLimit"] == "200Gi"
    assert mounted["/dev/shm"]["emptyDir"]["sizeLimit"] == "4Gi"
    assert q(res["requests"]["ephemeral-storage"]) > 200 << 30
    # templated: the DAG's params arrive rendered as text; a bad one fails the task, not the pod
    with pytest.raises(AirflowFailException, match="memory must be a Kubernetes quantity"):
        make("annotate", memory="lots").build_pod_request_obj(dry_run=True)


def test_a_pod_template_wins_over_the_defaults(tmp_path):
    template = tmp_path / "pod.yaml"
    template.write_text(
        "apiVersion: v1\nkind: Pod\nspec:\n"
        "  securityContext:\n    runAsUser: 2000\n    fsGroup: 2000\n"
        "  volumes:\n  - name: big-shm\n    emptyDir:\n      medium: Memory\n"
        "      sizeLimit: 16Gi\n"
        "  containers:\n  - name: base\n"
        "    resources:\n      requests:\n        memory: 64Gi\n      limits:\n"
        "        memory: 64Gi\n"
        "    securityContext:\n      readOnlyRootFilesystem: false\n"
        "    env:\n    - name: TMPDIR\n      value: /dev/shm\n"
        "    volumeMounts:\n    - name: big-shm\n      mountPath: /dev/shm\n"
    )
    m = manifest(make("annotate", pod_template_file=str(template)))
    validate(m)
    c, spec = base_container(m), m["spec"]
    assert c["resources"]["limits"]["memory"] == c["resources"]["requests"]["memory"] == "64Gi"
    assert c["resources"]["limits"]["cpu"] == c["resources"]["requests"]["cpu"]  # not theirs
    assert c["securityContext"] == {"readOnlyRootFilesystem": False}
    assert spec["securityContext"] == {"runAsUser": 2000, "fsGroup": 2000}
    assert volumes(m)["/dev/shm"]["name"] == "big-shm"
    assert "curator-shm" not in {v["name"] for v in spec["volumes"]}
    env = [e for e in c["env"] if e["name"] == "TMPDIR"]
    assert env == [{"name": "TMPDIR", "value": "/dev/shm"}]
    # the operator's own arguments win too
    own = manifest(
        make(
            "index",
            security_context=k8s.V1PodSecurityContext(run_as_user=3000, run_as_non_root=True),
            container_security_context=k8s.V1SecurityContext(privileged=False),
        )
    )
    assert own["spec"]["securityContext"] == {"runAsUser": 3000, "runAsNonRoot": True}
    assert base_container(own)["securityContext"] == {"privileged": False}


def test_weights_cache_on_a_named_pvc():
    m = manifest(make("annotate", weights_cache_claim="clip-weights-cache"))
    validate(m)
    cache = volumes(m)["/cache"]
    assert cache["persistentVolumeClaim"] == {"claimName": "clip-weights-cache"}
    assert m["spec"]["securityContext"]["fsGroup"] == 10001  # the PVC becomes writable to uid
    # its bytes are not the pod's ephemeral storage
    m_empty = manifest(make("annotate"))
    eph = [q(base_container(x)["resources"]["requests"]["ephemeral-storage"]) for x in (m, m_empty)]
    assert eph[0] < eph[1]


@pytest.mark.parametrize("spot", [True, "True", "true"])
def test_spot_adds_gke_spot_selector_and_toleration(spot):
    m = manifest(
        make(
            "annotate",
            spot=spot,
            node_selector={"cloud.google.com/gke-accelerator": "nvidia-l4"},
        )
    )
    validate(m)
    spec = m["spec"]
    assert spec["nodeSelector"] == {
        "cloud.google.com/gke-accelerator": "nvidia-l4",
        "cloud.google.com/gke-spot": "true",
    }
    assert {
        "key": "cloud.google.com/gke-spot",
        "operator": "Equal",
        "value": "true",
        "effect": "NoSchedule",
    } in spec["tolerations"]
    assert GPU_RESOURCE in [t["key"] for t in spec["tolerations"]]
    off = manifest(make("annotate", spot="False"))
    assert not off["spec"].get("nodeSelector")


def test_kubernetes_mode_defers_by_default():
    assert make("annotate").deferrable is True
    assert make("index", deferrable=False).deferrable is False
