"""Curate an image-text WebDataset drop: annotate, filter and reshard it into a new dataset.

discover -> index[group] -> annotate[group]
         -> dedup_fit -> dedup_assign/dedup_hash[group] -> dedup[cluster group]
         -> dedup_result[group] (the ``dedup`` param; skipped when off)
         -> clip_threshold (the ``clip_score_top_fraction`` param; skipped when empty)
         -> save_metadata[group] -> plan_reshard
         -> reshard[output group] -> commit (emits the ``curated_image_text_pairs`` asset event)
         -> report (``<output>/report.html``)

Where it reads and writes:
- ``dataset`` param, or when empty (null) the dated drop folder ``<drops>/<YYYY-MM-DD>`` of the
  run's logical date (a manual run without one uses the day it runs), so scheduled runs and
  backfills (the UI's Backfill tab, ``airflow backfill create``) process each day's drop; a folder
  without shards fails the run at once unless ``allow_empty``;
- ``output`` param, or when empty ``<curated>/<YYYY-MM-DD>``; work files go to ``<output>/_work``.
Every param has a default, so the trigger form opens ready to submit.
Every step skips work that is done, so rerunning or backfilling a curated drop is cheap and
writes the same bytes. Steps run as local subprocesses or as pods (``execution`` param, else
``[curator] execution`` / ``AIRFLOW__CURATOR__EXECUTION``); annotation pods get GPUs.

Deployment knobs (environment of the scheduler/workers): ``CURATOR_DROPS`` and
``CURATOR_CURATED`` (default roots), ``CURATOR_GPU_POOL`` and ``CURATOR_MAX_GPU_TASKS`` (GPU
capacity), ``CURATOR_SCHEDULE`` (cron or preset, ``none`` for manual only), ``CURATOR_PARAMS``
(a JSON object of param defaults, e.g. ``{"model": "ViT-B-32", "min_aesthetic": 5}``: what
scheduled runs, backfills and the form's defaults use).
"""

from __future__ import annotations

import json
import os
from datetime import timedelta

import pendulum
from airflow.sdk import DAG, Asset, Param
from airflow.sdk.definitions.param import ParamsDict

from airflow_curator.core.dataset.thresholds import PRESETS
from airflow_curator.operators import (
    ClipThresholdOperator,
    CommitOperator,
    CurationReportOperator,
    DedupAssignOperator,
    DedupFitOperator,
    DedupHashOperator,
    DedupResultOperator,
    GpuAnnotateOperator,
    IndexShardsOperator,
    PlanReshardOperator,
    ReshardOperator,
    SaveMetadataOperator,
    SemanticDedupOperator,
    ShardDiscoveryOperator,
)

DROPS = os.environ.get("CURATOR_DROPS", "gs://example-bucket/image-text/drops")
CURATED = os.environ.get("CURATOR_CURATED", "gs://example-bucket/image-text/curated")
SCHEDULE = os.environ.get("CURATOR_SCHEDULE", "@daily")
GPU_POOL = os.environ.get("CURATOR_GPU_POOL", "default_pool")
MAX_GPU_TASKS = int(os.environ.get("CURATOR_MAX_GPU_TASKS", "8"))
PARAM_DEFAULTS = json.loads(os.environ.get("CURATOR_PARAMS") or "{}")
SHA256 = "^((sha256:)?[0-9A-Fa-f]{64})?$"  # a pin, or empty for the built-in pin table
CPU = "^([0-9]+(\\.[0-9]+)?|[0-9]+m)?$"  # Kubernetes quantities: 8, 0.5, 500m
MEMORY = "^([0-9]+(\\.[0-9]+)?([KMGT]i?)?)?$"  # 32Gi, 500M
# save-metadata's filters beyond the score thresholds (core.dataset.thresholds)
FILTER_PARAMS = (
    "clip_score_top_fraction",
    "preset",
    "min_image_side",
    "max_aspect_ratio",
    "min_caption_words",
    "min_caption_chars",
    "caption_languages",
    "min_language_score",
)

# Downstream training DAGs schedule on this; each event's extra has the output URI and counts.
CURATED_ASSET = Asset(name="curated_image_text_pairs", uri=CURATED)

# Templates are strict and manual runs have no logical date: use ``ds`` only when defined.
DROP_DATE = "(ds if ds is defined and ds else dag_run.run_after | ds)"
DATASET = "{{ params.dataset or (params.drops ~ '/' ~ " + DROP_DATE + ") }}"
OUTPUT = "{{ params.output or (params.curated ~ '/' ~ " + DROP_DATE + ") }}"


def _param(name: str) -> str:
    return "{{ params." + name + " }}"


def _defaults(params: ParamsDict) -> None:
    """Set the deployment's param defaults from ``CURATOR_PARAMS``, checked here at parse time
    (a wrong name or value shows as an import error, not as failed runs)."""
    unknown = sorted(set(PARAM_DEFAULTS) - set(params))
    if unknown:
        raise ValueError(f"CURATOR_PARAMS: no such params {unknown}; params: {sorted(params)}")
    for name, value in PARAM_DEFAULTS.items():
        old = params.get_param(name)
        params[name] = Param(value, description=old.description, **old.schema)
        params.get_param(name).resolve()  # validates the value against the param's schema


def _path(title: str, description: str) -> Param:
    """An optional text param: null or empty means "the default" (the form's cleared field)."""
    return Param(None, type=["null", "string"], title=title, description=description)


def _pin(what: str) -> Param:
    return Param(
        None,
        type=["null", "string"],
        pattern=SHA256,
        description=f"sha256 that {what} must have (a file that differs is refused); empty: "
        "the built-in pin of a default file, else unpinned (a warning)",
    )


COMMON = {
    "dataset": DATASET,
    "output_uri": OUTPUT,
    "execution": _param("execution"),
}

with DAG(
    dag_id="curate_image_text_pairs",
    description="Annotate (CLIP, aesthetic, NSFW), filter and reshard an image-text WebDataset",
    schedule=None if SCHEDULE.lower() == "none" else SCHEDULE,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=4,
    render_template_as_native_obj=True,  # ints, floats and nulls reach the steps as such
    default_args={"retries": 2, "retry_delay": timedelta(minutes=1)},
    tags=["curation", "webdataset", "gpu"],
    doc_md=__doc__,
    params={
        "dataset": _path(
            "Dataset",
            "Input WebDataset folder (local path, gs://...). Empty: the dated drop folder "
            "under 'drops' for the run's logical date.",
        ),
        "output": _path("Output", "Curated dataset folder. Empty: <curated>/<date>."),
        "drops": Param(DROPS, type="string", minLength=1, description="Root of dated drops"),
        "curated": Param(CURATED, type="string", minLength=1, description="Root of outputs"),
        "allow_empty": Param(
            False,
            type="boolean",
            description="Accept a dataset folder without shards (the run then has nothing to "
            "curate); off: such a run fails at once and says what the folder holds",
        ),
        "execution": Param(
            None,
            type=["null", "string"],
            enum=[None, "local", "kubernetes"],
            values_display={"null": "[curator] execution of the deployment"},
            description="Where steps run; empty: [curator] execution in the Airflow config",
        ),
        "model": Param(
            "ViT-L-14",
            type="string",
            minLength=1,
            description="open_clip architecture or a model-config .json URI",
        ),
        "weights": _path("CLIP weights", "CLIP weights URI; empty: the pinned checkpoint"),
        "weights_sha256": _pin("the CLIP weights"),
        "aesthetic_weights": _path(
            "Aesthetic head", "Aesthetic head URI or 'none'; empty: the pinned LAION head"
        ),
        "aesthetic_sha256": _pin("the aesthetic head"),
        "nsfw_weights": _path(
            "NSFW head",
            "NSFW head URI or 'none'; empty: NeMo Curator's default, LAION's CLIP-based "
            "detector clip_autokeras_binary_nsfw.pth (its sha256 is logged: pin it below)",
        ),
        "nsfw_sha256": _pin("the NSFW head"),
        "min_aesthetic": Param(
            None,
            type=["null", "number"],
            minimum=0,
            maximum=10,
            description="Keep if >= (0-10)",
        ),
        "max_nsfw": Param(
            None, type=["null", "number"], minimum=0, maximum=1, description="Keep if <= (0-1)"
        ),
        "min_clip_score": Param(
            None,
            type=["null", "number"],
            minimum=-1,
            maximum=1,
            description="Keep if >= (cosine)",
        ),
        "clip_score_top_fraction": Param(
            None,
            type=["null", "number"],
            exclusiveMinimum=0,
            maximum=1,
            description="Keep the run's top fraction by CLIP score (DataComp's baseline: 0.3); "
            "the exact threshold over every shard, ties at it kept",
        ),
        "preset": Param(
            None,
            type=["null", "string"],
            enum=[None, *sorted(PRESETS)],
            values_display={"null": "none", "datacomp-basic": "DataComp basic filtering"},
            description="A filter recipe; the filter params given override its values. "
            "datacomp-basic: English captions (fastText), >= 3 words and >= 6 characters, "
            "smaller image side >= 200 px, aspect ratio <= 3",
        ),
        "min_image_side": Param(
            None,
            type=["null", "integer"],
            minimum=0,
            description="Keep if the decoded image's smaller side >= (px)",
        ),
        "max_aspect_ratio": Param(
            None,
            type=["null", "number"],
            minimum=1,
            description="Keep if longer side / shorter side <=",
        ),
        "min_caption_words": Param(
            None, type=["null", "integer"], minimum=0, description="Keep if caption words >="
        ),
        "min_caption_chars": Param(
            None, type=["null", "integer"], minimum=0, description="Keep if caption characters >="
        ),
        "caption_languages": Param(
            None,
            type=["null", "string"],
            pattern="^([a-z]{2,3}(,[a-z]{2,3})*)?$",
            description="Keep if the caption's language (fastText lid.176) is one of these, "
            "comma separated: en,de",
        ),
        "min_language_score": Param(
            None,
            type=["null", "number"],
            minimum=0,
            maximum=1,
            description="Keep if the language ID's confidence >= (0-1)",
        ),
        "require": Param(
            [],
            type="array",
            items={"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]*$"},
            description="Boolean columns of the input metadata that must also be true to "
            "pass (your own labels, an earlier pass); one per line",
        ),
        "filter_column": Param(
            "passes_curation",
            type="string",
            pattern="^[A-Za-z_][A-Za-z0-9_]*$",
            description="Boolean column written by save-metadata and used by reshard",
        ),
        "samples_per_shard": Param(10000, type="integer", minimum=1, maximum=1_000_000),
        "old_id_col": Param(
            "old_key",
            type=["null", "string"],
            description="Column of the curated Parquet that keeps each record's input id "
            "(empty: not kept)",
        ),
        "max_shards": Param(5, type="integer", minimum=1, maximum=9, description="Shard digits"),
        "overwrite": Param(
            False,
            type="boolean",
            description="Write into an output folder that holds files this DAG did not plan "
            "(refused otherwise): its shard files are removed, other files kept",
        ),
        "device": Param("auto", type="string", enum=["auto", "cpu", "cuda"]),
        "batch_size": Param(64, type="integer", minimum=1, maximum=4096),
        "gpus": Param(1, type="integer", minimum=0, maximum=16, description="GPUs per pod"),
        "spot": Param(
            False,
            type="boolean",
            description="Kubernetes: run the annotate (GPU) pods on GKE spot nodes (their node "
            "selector and toleration); a reclaimed node's pod is retried",
        ),
        "annotate_cpu": Param(
            None,
            type=["null", "string"],
            pattern=CPU,
            description="Kubernetes: CPU of an annotate pod (e.g. 12); empty: 4 decoding "
            "threads per GPU + 1",
        ),
        "annotate_memory": Param(
            None,
            type=["null", "string"],
            pattern=MEMORY,
            description="Kubernetes: memory of an annotate pod (e.g. 32Gi); empty: sized from "
            "the model, batch size and GPUs",
        ),
        "weights_cache_claim": _path(
            "Weights cache PVC",
            "Kubernetes: a PersistentVolumeClaim that annotate pods share as their weights "
            "cache; empty: a fresh emptyDir per pod (weights downloaded once per pod)",
        ),
        "dedup": Param(
            True,
            type="boolean",
            description="Drop near-duplicate images (SemDedup on the CLIP embeddings) and "
            "exact duplicates (same bytes): keeps the highest aesthetic score of each set",
        ),
        "dedup_eps": Param(
            0.01,
            type="number",
            minimum=0,
            maximum=1,
            description="Near-duplicates: cosine similarity above 1 - eps",
        ),
        "dedup_clusters": Param(
            1000, type="integer", minimum=1, description="k-means clusters for SemDedup"
        ),
        "group_bytes": Param(
            4 << 30,
            type="integer",
            minimum=1,
            description="Tar bytes per mapped task (input and output groups): fewer, larger "
            "tasks amortise pod start and model load",
        ),
    },
) as dag:
    _defaults(dag.params)
    discover = ShardDiscoveryOperator(
        task_id="discover",
        options={"group_bytes": _param("group_bytes"), "allow_empty": _param("allow_empty")},
        **COMMON,
    )
    groups = discover.output

    index = IndexShardsOperator.partial(task_id="index", **COMMON).expand(group=groups)

    annotate = GpuAnnotateOperator.partial(
        task_id="annotate",
        gpus=_param("gpus"),
        cpu=_param("annotate_cpu"),
        memory=_param("annotate_memory"),
        spot=_param("spot"),
        weights_cache_claim=_param("weights_cache_claim"),
        pool=GPU_POOL,
        max_active_tis_per_dag=MAX_GPU_TASKS,
        options={
            name: _param(name)
            for name in (
                "model",
                "weights",
                "weights_sha256",
                "aesthetic_weights",
                "aesthetic_sha256",
                "nsfw_weights",
                "nsfw_sha256",
                "device",
                "batch_size",
            )
        },
        **COMMON,
    ).expand(group=groups)

    # Deduplication stage, skipped when the dedup param is off.
    dedup_on = _param("dedup")
    dedup_fit = DedupFitOperator(
        task_id="dedup_fit",
        enabled=dedup_on,
        options={"n_clusters": _param("dedup_clusters"), "device": _param("device")},
        **COMMON,
    )
    dedup_assign = DedupAssignOperator.partial(
        task_id="dedup_assign", enabled=dedup_on, **COMMON
    ).expand(group=groups)
    dedup_hash = DedupHashOperator.partial(task_id="dedup_hash", enabled=dedup_on, **COMMON).expand(
        group=groups
    )
    dedup = SemanticDedupOperator.partial(
        task_id="dedup",
        enabled=dedup_on,
        options={"eps": _param("dedup_eps")},
        **COMMON,
    ).expand(group=dedup_fit.output)
    dedup_result = DedupResultOperator.partial(
        task_id="dedup_result", enabled=dedup_on, **COMMON
    ).expand(group=groups)

    clip_threshold = ClipThresholdOperator(
        task_id="clip_threshold",
        options={"clip_score_top_fraction": _param("clip_score_top_fraction")},
        **COMMON,
    )

    save_metadata = SaveMetadataOperator.partial(
        task_id="save_metadata",
        dedup=dedup_on,
        require=_param("require"),
        trigger_rule="none_failed",  # runs when the dedup stage was skipped
        options={
            name: _param(name)
            for name in (
                "min_aesthetic",
                "max_nsfw",
                "min_clip_score",
                "filter_column",
                *FILTER_PARAMS,
            )
        },
        **COMMON,
    ).expand(group=groups)

    plan = PlanReshardOperator(
        task_id="plan_reshard",
        options={
            name: _param(name)
            for name in (
                "filter_column",
                "samples_per_shard",
                "max_shards",
                "old_id_col",
                "group_bytes",
                "overwrite",
            )
        },
        **COMMON,
    )

    reshard = ReshardOperator.partial(task_id="reshard", **COMMON).expand(group=plan.output)

    # Commits also when nothing was kept (no output groups, so no reshard task ran).
    commit = CommitOperator(
        task_id="commit",
        outlets=[CURATED_ASSET],
        trigger_rule="none_failed_min_one_success",
        **COMMON,
    )

    # The page curators choose thresholds from: <output>/report.html, linked from the task.
    report = CurationReportOperator(task_id="report", **COMMON)

    discover >> index >> annotate >> dedup_fit >> [dedup_assign, dedup_hash] >> dedup
    dedup >> dedup_result >> save_metadata
    annotate >> clip_threshold >> save_metadata
    save_metadata >> plan >> reshard >> commit >> report
    plan >> commit
