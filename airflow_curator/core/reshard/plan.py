"""Reshard plan: which kept input records go to which output shard, decided once, up front.

Planning reads only the id and filter columns of each shard's metadata. Prefix sums of the kept
counts give every output shard its pieces: ``(input shard, first, last)`` ranges of that shard's
kept records, in id order within each input shard (as NeMo Curator writes them). Output tasks then
run in any grouping or order and still write the same bytes. The plan also fixes the output Parquet
schema (unified over all inputs) and a digest of each input's kept ids, so a reshard task notices
metadata that changed after planning.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import posixpath
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from airflow_curator.core.dataset.discovery import Manifest, Shard, shards_of
from airflow_curator.core.dataset.metadata import OK_STATUS, STATUS_COL, check_ids
from airflow_curator.core.errors import DataError, ShardError, UsageError, preview
from airflow_curator.core.groups import GROUP_BYTES, MAX_GROUPS, balanced_runs, group_value
from airflow_curator.core.io import parquet, storage
from airflow_curator.core.io.lease import output_lease
from airflow_curator.core.layout import SUCCESS, plan_url
from airflow_curator.core.stats import Result, Stats
from airflow_curator.core.wds.naming import SHARD_EXTS, SHARD_STEM, offset_digits, shard_name

if TYPE_CHECKING:
    import pyarrow as pa

logger = logging.getLogger(__name__)

FAILED_DOWNLOAD = "failed download"  # why a kept row is not written, in results and the report


@dataclass
class InputShard:
    stem: str
    tar: str
    tar_bytes: int
    idx: str | None  # the shard's index, used when it exists and matches the tar
    metadata: str
    rows: int
    kept: int
    digest: str  # sha256 of the kept ids, one per line
    failed: int = 0  # rows the filter keeps that img2dataset marks failed: nothing to write


@dataclass
class OutputShard:
    index: int
    name: str
    records: int
    pieces: list[tuple[str, int, int]]  # (input stem, first kept ordinal, end kept ordinal)
    est_bytes: int = 0


@dataclass
class Plan:
    dataset: str
    metadata: str
    output: str
    filter_column: str
    id_col: str
    samples_per_shard: int
    max_shards: int
    old_id_col: str | None
    schema: str  # base64 of the Arrow IPC schema of the output Parquet
    inputs: list[InputShard]
    outputs: list[OutputShard] = field(default_factory=list)

    @property
    def records(self) -> int:
        return sum(o.records for o in self.outputs)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()

    @classmethod
    def from_json(cls, text: str) -> Plan:
        d = json.loads(text)
        d["inputs"] = [InputShard(**i) for i in d["inputs"]]
        d["outputs"] = [
            OutputShard(**{**o, "pieces": [tuple(p) for p in o["pieces"]]}) for o in d["outputs"]
        ]
        return cls(**d)

    def arrow_schema(self) -> pa.Schema:
        import pyarrow as pa

        return pa.ipc.read_schema(pa.py_buffer(base64.b64decode(self.schema)))

    def input(self, stem: str) -> InputShard:
        for i in self.inputs:
            if i.stem == stem:
                return i
        raise DataError(f"the plan has no input shard {stem}")


def load_plan(url: str) -> Plan:
    try:
        return Plan.from_json(storage.read_bytes(url).decode())
    except FileNotFoundError:
        raise UsageError(f"reshard plan {url} does not exist: run plan-reshard first") from None


def kept_rows(
    table: pa.Table, filter_column: str, shard: str, id_col: str
) -> tuple[list[int], int]:
    """Row numbers whose filter column is True (null counts as False), in id order, and how
    many more the filter keeps that can never be written: img2dataset's failed downloads (a
    ``status`` other than ``success``), which have no members in the tar."""
    import pyarrow as pa

    if filter_column not in table.column_names:
        raise ShardError(shard, f"metadata has no filter column {filter_column!r}")
    column = table.column(filter_column)
    if not pa.types.is_boolean(column.type):
        raise ShardError(
            shard, f"filter column {filter_column!r} is {column.type}, not a boolean column"
        )
    ids = table.column(id_col).to_pylist()
    kept = sorted((i for i, v in enumerate(column.to_pylist()) if v), key=ids.__getitem__)
    if STATUS_COL not in table.column_names:
        return kept, 0
    status = table.column(STATUS_COL).to_pylist()
    written = [i for i in kept if status[i] is None or status[i] == OK_STATUS]
    return written, len(kept) - len(written)


def ids_digest(ids: list[str]) -> str:
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()


def check_apart(dataset: str, output: str) -> None:
    """Refuse an output that is the input or inside it: commit sweeps shard-named files in the
    output folder, and discovery of the input would pick the output's shards up."""
    a, b = (posixpath.normpath(storage.local_path(x).rstrip("/")) for x in (dataset, output))
    if a == b:
        raise UsageError(f"output {output} is the input dataset: choose another folder")
    if b.startswith(a + "/"):
        raise UsageError(f"output {output} is inside the input dataset {dataset}")


def _want(shard: Shard, meta_url: str, id_col: str, filter_column: str) -> parquet.Want:
    """The id, filter and status columns of the shard's metadata (its size known when it is
    the dataset's own Parquet)."""
    size = shard.parquet_bytes if meta_url == shard.parquet else None
    return parquet.Want(meta_url, shard.stem, [id_col, filter_column], (STATUS_COL,), size)


def _read_input(
    shard: Shard, meta_url: str, id_col: str, filter_column: str, read: parquet.Loaded
) -> tuple[Any, ...]:
    """(the file's schema, the input's plan entry) from its id, filter and status columns."""
    schema, table = read.schema, read.table
    ids = check_ids(table.column(id_col).to_pylist(), shard.stem, meta_url)
    rows, failed = kept_rows(table, filter_column, shard.stem, id_col)
    return schema, InputShard(
        shard.stem,
        shard.tar,
        shard.tar_bytes,
        # where index writes it, whether or not it exists yet: the manifest predates index, and
        # a plan that said "no index" on the first run and "an index" on a rerun would differ
        # and rewrite every output shard (the writer checks the index, else scans the tar)
        shard.idx or storage.join(posixpath.dirname(shard.tar), f"{shard.stem}.idx"),
        meta_url,
        len(ids),
        len(rows),
        ids_digest([ids[r] for r in rows]),
        failed,
    )


def output_schema(schemas: list[pa.Schema], id_col: str, old_id_col: str | None) -> pa.Schema:
    """Unified input schema, the id column as string, plus ``old_id_col`` (old id's type)."""
    import pyarrow as pa

    try:
        unified = pa.unify_schemas(schemas, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        raise DataError(f"the shards' metadata schemas do not agree: {e}") from None
    unified = unified.remove_metadata()
    old_type = unified.field(id_col).type
    fields = [pa.field(id_col, pa.string()) if f.name == id_col else f for f in unified]
    if old_id_col:
        fields = [f for f in fields if f.name != old_id_col] + [pa.field(old_id_col, old_type)]
    return pa.schema(fields)


def assign_outputs(inputs: list[InputShard], samples_per_shard: int) -> list[OutputShard]:
    """Cut the kept records, in input order, into output shards of ``samples_per_shard``."""
    outputs: list[OutputShard] = []
    current: OutputShard | None = None
    for inp in inputs:
        per_record = inp.tar_bytes / max(inp.rows, 1)
        first = 0
        while first < inp.kept:
            if current is None or current.records == samples_per_shard:
                current = OutputShard(len(outputs), "", 0, [])
                outputs.append(current)
            take = min(samples_per_shard - current.records, inp.kept - first)
            current.pieces.append((inp.stem, first, first + take))
            current.records += take
            current.est_bytes += int(per_record * take)
            first += take
    return outputs


def make_plan(
    dataset: str,
    output: str,
    filter_column: str,
    *,
    metadata: str | None = None,
    id_col: str = "key",
    samples_per_shard: int = 10000,
    max_shards: int = 5,
    old_id_col: str | None = None,
    shards: str | None = None,
    manifest: Manifest | str | None = None,
) -> Plan:
    """Read kept counts and schemas; fail before anything is written if the output can't fit.
    ``manifest``: discover's (object or URI), so no listing."""
    offset_digits(samples_per_shard)  # validates >= 1
    if max_shards < 1:
        raise UsageError(f"max_shards must be >= 1, got {max_shards}")
    check_apart(dataset, output)
    if old_id_col == id_col:
        raise UsageError(f"old_id_col must differ from the id column {id_col!r}")
    selected = shards_of(dataset, manifest).select(shards)
    meta_root = metadata or dataset
    metas = [storage.join(meta_root, f"{s.stem}.parquet") for s in selected]
    wants = [_want(s, m, id_col, filter_column) for s, m in zip(selected, metas, strict=True)]
    read = [
        _read_input(s, m, id_col, filter_column, loaded)  # type: ignore[arg-type]
        for s, m, loaded in zip(selected, metas, parquet.load_many(wants), strict=True)
    ]
    inputs = [r[1] for r in read]
    schema = output_schema([r[0] for r in read], id_col, old_id_col) if read else None
    kept = sum(i.kept for i in inputs)
    needed = -(-kept // samples_per_shard)
    if needed > 10**max_shards:
        raise UsageError(
            f"{kept} kept records need {needed} output shards of {samples_per_shard}, more than "
            f"max_shards={max_shards} digits allow ({10**max_shards}); raise max_shards or "
            f"samples_per_shard"
        )
    outputs = assign_outputs(inputs, samples_per_shard)
    for o in outputs:
        o.name = shard_name(o.index, max_shards)
    if schema is None:
        import pyarrow as pa

        schema = pa.schema([pa.field(id_col, pa.string())])
    encoded = base64.b64encode(schema.serialize().to_pybytes()).decode()
    return Plan(
        dataset, meta_root, output, filter_column, id_col, samples_per_shard, max_shards,
        old_id_col, encoded, inputs, outputs,
    )  # fmt: skip


def output_groups(
    plan: Plan, url: str, max_groups: int = MAX_GROUPS, group_bytes: int = GROUP_BYTES
) -> list[dict[str, Any]]:
    """Contiguous runs of output shards balanced by estimated bytes, as small XCom values."""
    groups = []
    for run in balanced_runs([o.est_bytes for o in plan.outputs], max_groups, group_bytes):
        outs = plan.outputs[run.start : run.stop]
        numbers, first, last = [o.index for o in outs], outs[0].name, outs[-1].name
        records, nbytes = sum(o.records for o in outs), sum(o.est_bytes for o in outs)
        groups.append(
            group_value("outputs", numbers, first, last, records=records, bytes=nbytes, plan=url)
        )
    return groups


def is_shard_file(name: str) -> bool:
    stem, _, ext = name.partition(".")
    return ext in SHARD_EXTS and bool(SHARD_STEM.match(stem))


def claim_output(output: str, overwrite: bool = False) -> list[str]:
    """Refuse to write into a folder that is not ours (``UsageError``, exit 2, naming what it
    holds): only a missing or empty one, or one this job planned before (its ``_work`` plan),
    is. ``overwrite`` removes the shard-named files of a foreign folder instead (and returns
    them), leaving its other files alone. One listing, plus one lookup of the plan."""
    files = storage.list_files(output, missing_ok=True)
    if not files or storage.is_file(plan_url(output)):
        return []
    names = [e.name for e in files]
    shards = [e for e in files if is_shard_file(e.name)]
    if not overwrite:
        raise UsageError(
            f"output folder {output} is not empty and holds no plan of this job "
            f"({posixpath.join('_work', posixpath.basename(plan_url(output)))}): it holds "
            f"{preview(names, 5)}; give an empty or new folder, or --overwrite to remove its "
            f"shard files ({preview([e.name for e in shards], 5) if shards else 'none'})"
        )
    for e in shards:
        storage.remove_file(e.url)
    removed = [e.name for e in shards]
    if removed:
        logger.warning("--overwrite: removed %d shard files from %s: %s", len(removed), output,
                       preview(removed, 10))  # fmt: skip
    return removed


def plan_reshard(
    dataset: str,
    output: str,
    filter_column: str,
    *,
    max_groups: int = MAX_GROUPS,
    group_bytes: int = GROUP_BYTES,
    overwrite: bool = False,
    run_id: str | None = None,
    **kwargs: Any,
) -> Result:
    """Make and save the plan (atomically), drop a stale ``_SUCCESS`` (not when the plan is the
    one already there), return the output groups. A folder that is not ours is refused
    (``claim_output``) unless ``overwrite``. The plan is made (reads only), then written
    holding the output's lease for the run ``run_id`` (``core.io.lease``: another run writing
    there is refused)."""
    stats = Stats()
    check_apart(dataset, output)
    removed = claim_output(output, overwrite)
    plan = make_plan(dataset, output, filter_column, **kwargs)  # reads only
    url = plan_url(output)
    text = plan.to_json().encode()
    with output_lease(output, run_id):
        if storage.same_bytes(url, text):  # a rerun: a committed output stays committed
            logger.info("plan %s is unchanged", url)
        else:
            success = storage.join(output, SUCCESS)
            if storage.remove_file(success):
                logger.info("removed %s: the output is being rewritten", success)
            storage.write_bytes(url, text)
    kept = plan.records
    total = sum(i.rows for i in plan.inputs)
    failed = sum(i.failed for i in plan.inputs)
    message = f"{kept} of {total} records kept -> {len(plan.outputs)} output shards"
    if failed:
        message += f"; {failed} more kept rows not written: failed download (no image in the tar)"
    if kept == 0:
        message = f"no record of {total} has {filter_column!r} true: the output will be empty"
        logger.warning("%s", message)
    else:
        logger.info("%s", message)
    groups = output_groups(plan, url, max_groups, group_bytes)
    return stats.result(
        plan=url,
        output=output,
        records=kept,
        input_records=total,
        input_shards=len(plan.inputs),
        output_shards=len(plan.outputs),
        not_written={FAILED_DOWNLOAD: failed} if failed else {},
        empty_inputs=[i.stem for i in plan.inputs if i.kept == 0],
        groups=groups,
        message=message,
        **({"overwritten": removed} if removed else {}),
    )
