"""Commit: check every planned output shard, write the dataset manifest, then ``_SUCCESS``.

Beside ``_manifest.json`` it writes ``sizes.json`` (``{"00000.tar": records, ...}``), which
open_clip's WebDataset loader reads to size a dataset instead of demanding
``--train-num-samples``.

Until ``_SUCCESS`` exists the output folder is not a finished dataset. Commit also removes what
failed or earlier attempts left behind: temporary files of interrupted writes and shard files
(or markers) that the current plan does not have. Checks use one listing and the small markers the
reshard tasks wrote (sizes and sha256 computed while writing), so commit reads no shard data unless
``verify_hashes`` asks it to.
"""

from __future__ import annotations

import hashlib
import json
import logging
from concurrent.futures import ThreadPoolExecutor

from airflow_curator.core.errors import ShardError, UsageError, preview
from airflow_curator.core.io import storage
from airflow_curator.core.io.lease import Lease, output_lease
from airflow_curator.core.layout import (
    OUTPUT_MANIFEST,
    SIZES,
    SUCCESS,
    marker_url,
    markers_url,
)
from airflow_curator.core.reshard.plan import Plan, load_plan
from airflow_curator.core.stats import Result, Stats
from airflow_curator.core.wds.naming import SHARD_EXTS, SHARD_STEM

logger = logging.getLogger(__name__)


def _file_sha256(url: str) -> str:
    h = hashlib.sha256()
    with storage.open_read(url) as f:
        while chunk := f.read(8 << 20):
            h.update(chunk)
    return h.hexdigest()


def check_outputs(
    plan: Plan,
    verify_hashes: bool = False,
    threads: int = 16,
    entries: list[storage.Entry] | None = None,
) -> list[dict]:
    """The markers of all planned outputs (read together, one request each), checked against
    the plan and the output folder's listing (``entries``, or one listing now)."""
    if entries is None:
        entries = storage.list_files(plan.output, missing_ok=True)
    listing = {e.name: e for e in entries}
    urls = [marker_url(plan.output, o.name) for o in plan.outputs]
    markers = [
        None if raw is None else json.loads(raw) for raw in storage.read_many(urls, missing_ok=True)
    ]
    missing = [o.name for o, m in zip(plan.outputs, markers, strict=True) if m is None]
    if missing:
        raise UsageError(
            f"{len(missing)} of {len(plan.outputs)} output shards were not written: "
            f"{preview(missing)} (run reshard for them)"
        )
    digest = plan.digest
    checked: list[dict] = []
    for out, marker in zip(plan.outputs, markers, strict=True):
        assert marker is not None
        if marker.get("plan") != digest:
            raise ShardError(out.name, "was written for another plan: run reshard again")
        if marker.get("records") != out.records:
            raise ShardError(
                out.name, f"has {marker.get('records')} records, the plan says {out.records}"
            )
        for ext in SHARD_EXTS:
            info = marker["files"][ext]
            entry = listing.get(info["name"])
            if entry is None:
                raise ShardError(out.name, f"{info['name']} is missing")
            if entry.size != info["size"]:
                raise ShardError(
                    out.name, f"{info['name']} has {entry.size} bytes, {info['size']} were written"
                )
        checked.append(marker)
    if verify_hashes:
        files = [(m["shard"], f) for m in checked for f in m["files"].values()]
        with ThreadPoolExecutor(max(1, min(threads, len(files)))) as pool:
            hashes = pool.map(
                lambda sf: _file_sha256(storage.join(plan.output, sf[1]["name"])), files
            )
            for (shard, info), actual in zip(files, hashes, strict=True):
                if actual != info["sha256"]:
                    raise ShardError(shard, f"{info['name']} sha256 differs from what was written")
    return checked


def leftovers(plan: Plan, entries: list[storage.Entry] | None = None) -> list[str]:
    """URLs the plan does not account for: temporaries, stale shard files and markers
    (``entries``: the output folder's listing, or one listing now)."""
    expected = {f"{o.name}.{ext}" for o in plan.outputs for ext in SHARD_EXTS}
    stale: list[str] = []
    if entries is None:
        entries = storage.list_files(plan.output, missing_ok=True)
    for e in entries:
        stem, _, ext = e.name.partition(".")
        if storage.TMP_MARK in e.name or (
            ext in SHARD_EXTS and SHARD_STEM.match(stem) and e.name not in expected
        ):
            stale.append(e.url)
    names = {f"{o.name}.json" for o in plan.outputs}
    for e in storage.list_files(markers_url(plan.output), missing_ok=True):
        if e.name not in names:
            stale.append(e.url)
    return stale


def manifest_json(plan: Plan, markers: list[dict]) -> str:
    """The finished dataset's manifest; no timestamps, so a rerun writes the same bytes."""
    return json.dumps(
        {
            "dataset": plan.output,
            "source": plan.dataset,
            "plan": plan.digest,
            "filter_column": plan.filter_column,
            "id_col": plan.id_col,
            "old_id_col": plan.old_id_col,
            "samples_per_shard": plan.samples_per_shard,
            "max_shards": plan.max_shards,
            "records": sum(m["records"] for m in markers),
            "bytes": sum(f["size"] for m in markers for f in m["files"].values()),
            "shards": [
                {"shard": m["shard"], "records": m["records"], "files": m["files"]} for m in markers
            ],
        },
        indent=1,
        sort_keys=True,
    )


def sizes_json(markers: list[dict]) -> str:
    """open_clip's ``sizes.json``: records per tar, by file name."""
    sizes = {m["files"]["tar"]["name"]: m["records"] for m in markers}
    return json.dumps(sizes, indent=1, sort_keys=True)


def sync_outputs(plan: Plan, threads: int = 16) -> None:
    """Flush the output shards to disk before ``_SUCCESS`` claims them (reshard writes without
    fsync: one flush pass here instead of a disk wait per file)."""
    urls = [
        storage.join(plan.output, f"{o.name}.{ext}") for o in plan.outputs for ext in SHARD_EXTS
    ]
    if urls and storage.is_local(plan.output):
        with ThreadPoolExecutor(max(1, min(threads, len(urls)))) as pool:
            list(pool.map(storage.sync_file, urls))


def commit(
    plan_url: str, *, verify_hashes: bool = False, sync: bool = True, run_id: str | None = None
) -> Result:
    """Verify, sweep leftovers, flush, write ``_manifest.json`` and then ``_SUCCESS``; the
    run's last step: it releases the output's lease when it succeeds (``core.io.lease``).

    ``sync=False`` skips the flush to disk of local outputs (for scratch data only)."""
    plan = load_plan(plan_url)
    with output_lease(plan.output, run_id, last=True) as lease:
        return _commit(plan, verify_hashes, sync, lease)


def _commit(plan: Plan, verify_hashes: bool, sync: bool, lease: Lease) -> Result:
    stats = Stats()
    entries = storage.list_files(plan.output, missing_ok=True)  # one listing for both
    markers = check_outputs(plan, verify_hashes, entries=entries)
    removed = leftovers(plan, entries)
    lease.check()
    for url in removed:
        logger.info("removing leftover %s", url)
        storage.remove_file(url)
    storage.makedirs(plan.output)
    if sync:
        sync_outputs(plan)
    manifest_url = storage.join(plan.output, OUTPUT_MANIFEST)
    manifest = manifest_json(plan, markers).encode()
    sizes_url = storage.join(plan.output, SIZES)
    sizes = sizes_json(markers).encode()
    success = storage.join(plan.output, SUCCESS)
    lease.check()
    if (
        storage.is_file(success)
        and storage.same_bytes(manifest_url, manifest)
        and storage.same_bytes(sizes_url, sizes)
    ):
        logger.info("%s was already committed with this plan: nothing to write", plan.output)
    else:
        storage.write_bytes(manifest_url, manifest)
        storage.write_bytes(sizes_url, sizes)
        storage.write_bytes(success, b"")
    records = sum(m["records"] for m in markers)
    if not records:
        logger.warning("committed an empty dataset at %s: no record was kept", plan.output)
    logger.info(
        "committed %s: %d shards, %d records, removed %d leftovers",
        plan.output,
        len(markers),
        records,
        len(removed),
    )
    return stats.result(
        dataset=plan.output,
        manifest=manifest_url,
        sizes=sizes_url,
        shards=len(markers),
        records=records,
        bytes=sum(m["files"]["tar"]["size"] for m in markers),
        removed=len(removed),
        verified_hashes=verify_hashes,
        synced=sync,
    )
