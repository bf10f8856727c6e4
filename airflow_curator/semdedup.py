"""NeMo Curator's semantic deduplication API, over the dedup core that the CLI steps run.

As in NeMo Curator 0.x (the 0.8 names and parameters)::

    embeddings = DocumentDataset(dataset.metadata)
    ClusteringModel(id_column="key", embedding_column="image_embedding", n_clusters=1000,
                    clustering_output_dir=out)(embeddings)
    dedup = SemanticClusterLevelDedup(
        n_clusters=1000, emb_by_clust_dir=out + "/embs_by_nearest_center", id_column="key",
        which_to_keep="hard", embedding_column="image_embedding", output_dir=dups,
    )
    dedup.compute_semantic_match_dfs()
    duplicates = dedup.extract_dedup_data(eps_to_extract=0.01)  # the ids to remove

``emb_by_clust_dir`` is the core's job folder: the partitions' ids, embeddings and aesthetic
scores go to its ``_work/annotations``, then ``dedup-fit`` (k-means), ``dedup-assign`` and
``dedup`` run there, with the same code and results as the command line. ``which_to_keep`` takes
NeMo's ``hard``, ``easy`` and ``random`` and this project's ``aesthetic`` (keep the highest
aesthetic score). The centroids are unit vectors, so ``sim_metric`` ``cosine`` and ``l2`` rank
alike. Exact (byte-identical) duplicates come from the ``dedup-hash`` step.
"""

from __future__ import annotations

import io
import logging
from typing import Any

from airflow_curator.core import layout
from airflow_curator.core.dedup import store as ds
from airflow_curator.core.dedup.dedup import KEEP_RULES
from airflow_curator.core.errors import UsageError
from airflow_curator.core.io import parquet, storage
from airflow_curator.frames import to_frame, to_table

logger = logging.getLogger(__name__)

__all__ = ["ClusteringModel", "DocumentDataset", "SemanticClusterLevelDedup"]

JOB_FOLDER = "embs_by_nearest_center"  # NeMo's name for the clustered embeddings


class DocumentDataset:
    """NeMo Curator's wrapper of a Dask DataFrame (``.df``)."""

    def __init__(self, dataset_df: Any) -> None:
        self.df = dataset_df

    def __len__(self) -> int:
        return len(self.df)

    @classmethod
    def read_parquet(cls, input_files: Any, columns: list[str] | None = None, **kwargs: Any) -> Any:
        import dask.dataframe as dd

        kwargs.pop("backend", None)  # NeMo's cudf/pandas switch: always pandas here
        return cls(dd.read_parquet(input_files, columns=columns, **kwargs))

    def to_parquet(self, output_path: str, **kwargs: Any) -> None:
        self.df.to_parquet(output_path, **kwargs)


def _remove_tree(url: str) -> None:
    fs, path = storage.fs_and_path(url)
    if fs.exists(path):
        logger.warning("removing %s: it is rewritten", url)
        fs.rm(path, recursive=True)


def write_embeddings(frame: Any, url: str, id_col: str, embedding_column: str) -> int:
    """One partition's id, embedding (as the core's ``image_embedding``) and aesthetic score,
    as an annotation file of the dedup job; returns its rows."""
    table = to_table(frame)
    names = [ds.EMBEDDING if c == embedding_column else c for c in table.column_names]
    ds.write_file(url, table.rename_columns(names))
    return table.num_rows


def read_assignment(url: str, job: str, id_col: str, embedding_column: str) -> Any:
    """One assign file of ``job`` as NeMo's clustered frame: id, embedding, ``nearest_cent``
    and ``cosine_dist_to_cent``."""
    import numpy as np
    import pyarrow as pa

    from airflow_curator.core.dedup.fit import load_centroids

    centroids = load_centroids(job).vectors
    table = parquet.read_table(url, None, ["id", "embedding", "cluster"])
    x = ds.to_matrix(table.column("embedding"), url)
    cluster = table.column("cluster").to_numpy()
    dist = 1.0 - np.einsum("ij,ij->i", x, centroids[cluster]) if len(x) else np.zeros(0)
    out = pa.table(
        {
            id_col: table.column("id"),
            embedding_column: table.column("embedding"),
            "nearest_cent": table.column("cluster"),
            "cosine_dist_to_cent": pa.array(dist, pa.float32()),
        }
    )
    return to_frame(out)


class ClusteringModel:
    """k-means over the embeddings (``dedup-fit`` on a seeded sample of ``sample`` rows, then
    ``dedup-assign`` of every row), NeMo's parameters; ``cluster_groups`` cuts the clusters into
    the dedup step's tasks (as ``--cluster-groups``)."""

    def __init__(
        self,
        id_column: str = "id",
        max_iter: int = 100,
        n_clusters: int = 1000,
        clustering_output_dir: str = "./clustering_results",
        embedding_column: str = "embeddings",
        random_state: int = 1234,
        clustering_input_partition_size: str | None = "2gb",
        logger: Any = "./",
        profile_dir: str | None = None,
        keep_all_columns: bool = False,
        *,
        sample: int = 100_000,
        cluster_groups: int = 16,
        device: str = "auto",
    ) -> None:
        self.id_col = id_column
        self.max_iter = max_iter
        self.n_clusters = n_clusters
        self.clustering_output_dir = clustering_output_dir
        self.embedding_column = embedding_column
        self.random_state = random_state
        self.sample = sample
        self.cluster_groups = cluster_groups
        self.device = device
        # NeMo's partition size, logger, profile_dir and keep_all_columns change nothing here:
        # files are per partition, progress goes to the module loggers
        storage.makedirs(clustering_output_dir)

    @property
    def job(self) -> str:
        return storage.join(self.clustering_output_dir, JOB_FOLDER)

    def __call__(self, embeddings_dataset: DocumentDataset) -> DocumentDataset:
        import dask
        import dask.dataframe as dd
        import numpy as np

        from airflow_curator.core.dedup.assign import assign_shards
        from airflow_curator.core.dedup.fit import fit_centroids, load_centroids

        df = embeddings_dataset.df
        if self.embedding_column not in df.columns:
            raise UsageError(
                f'Expected embedding column "{self.embedding_column}" to be in dataset. '
                f"Only found columns {list(df.columns)}"
            )
        columns = [self.id_col, self.embedding_column]
        if ds.AESTHETIC in df.columns and ds.AESTHETIC not in columns:
            columns.append(ds.AESTHETIC)  # the `aesthetic` keep rule ranks by it
        _remove_tree(storage.join(self.job, layout.WORK))
        folder = layout.annotations_url(self.job)
        tasks = [
            dask.delayed(write_embeddings)(
                part, storage.join(folder, f"{i:05d}.parquet"), self.id_col, self.embedding_column
            )
            for i, part in enumerate(df[columns].to_delayed())
        ]
        rows = sum(dask.compute(*tasks))
        if rows < self.n_clusters:
            raise UsageError(
                "Number of clusters is greater than the number of documents in your dataset: "
                f"dataset length is {rows} while n_clusters is set to {self.n_clusters}. "
                f"Please reduce n_clusters to be less than or equal to {rows}."
            )
        fit_centroids(
            self.job,
            n_clusters=self.n_clusters,
            parts=min(self.cluster_groups, self.n_clusters),
            iterations=self.max_iter,
            sample=self.sample,
            seed=self.random_state,
            device=self.device,
        )
        assign_shards(self.job, id_col=self.id_col, device=self.device)
        centroids = load_centroids(self.job).vectors
        buf = io.BytesIO()
        np.save(buf, centroids)
        storage.write_bytes(
            storage.join(self.clustering_output_dir, "kmeans_centroids.npy"), buf.getvalue()
        )
        files = [f.url for f in ds.shard_files(ds.folder_url(self.job, "assign"))]
        meta = read_assignment(files[0], self.job, self.id_col, self.embedding_column).iloc[:0]
        frame = dd.from_map(
            read_assignment,
            files,
            args=(self.job, self.id_col, self.embedding_column),
            meta=meta,
            label="clustered-embeddings",
            enforce_metadata=False,
        )
        return DocumentDataset(frame)


class SemanticClusterLevelDedup:
    """Near-duplicates within each cluster (the ``dedup`` step), NeMo's parameters.

    ``compute_semantic_match_dfs`` finds, for every record, its most similar higher-ranked
    record of the cluster (ranked by ``which_to_keep``); ``extract_dedup_data`` returns the
    records whose similarity to it exceeds ``1 - eps`` (the ones to remove), for any eps."""

    def __init__(
        self,
        n_clusters: int = 1000,
        emb_by_clust_dir: str = "./clustering_results/embs_by_nearest_center",
        id_column: str = "id",
        which_to_keep: str = "hard",
        sim_metric: str = "cosine",
        output_dir: str = "./clustering_results",
        embedding_column: str = "embeddings",
        batched_cosine_similarity: int = 1024,
        logger: Any = "./",
        profile_dir: str | None = None,
        *,
        device: str = "auto",
    ) -> None:
        if which_to_keep not in KEEP_RULES:
            raise UsageError(
                f"which_to_keep must be one of {', '.join(KEEP_RULES)}, not {which_to_keep!r}"
            )
        if sim_metric not in ("cosine", "l2"):
            raise UsageError(
                f"Invalid similarity metric: {sim_metric}. Only cosine and l2 are supported."
            )
        self.n_clusters = n_clusters
        self.emb_by_clust_dir = emb_by_clust_dir
        self.id_col = id_column
        self.which_to_keep = which_to_keep
        self.sim_metric = sim_metric
        self.output_dir = output_dir
        self.embedding_column = embedding_column
        self.batched_cosine_similarity = batched_cosine_similarity
        self.device = device
        self.semdedup_pruning_tables_dir = storage.join(output_dir, "semdedup_pruning_tables")
        self.computed_semantic_match_dfs = False

    def compute_semantic_match_dfs(self) -> None:
        """Run the core dedup over every cluster and write NeMo's pruning tables
        (``semdedup_pruning_tables/cluster_C.parquet``: id, max_id, cosine_sim_score)."""
        import pyarrow.compute as pc

        from airflow_curator.core.dedup.dedup import dedup_clusters
        from airflow_curator.core.dedup.fit import load_centroids

        cent = load_centroids(self.emb_by_clust_dir)
        if cent.parts.n_clusters != self.n_clusters:
            raise UsageError(
                f"n_clusters={self.n_clusters}, but {self.emb_by_clust_dir} was clustered into "
                f"{cent.parts.n_clusters}"
            )
        block = self.batched_cosine_similarity
        dedup_clusters(
            self.emb_by_clust_dir,
            eps=None,  # every best match: extract_dedup_data applies the threshold
            block=block if block > 0 else 2**31 - 1,
            exact="off",
            device=self.device,
            keep=self.which_to_keep,
        )
        _remove_tree(self.semdedup_pruning_tables_dir)
        matches = self._matches()
        for cluster in sorted(set(matches.column("cluster").to_pylist())):
            rows = matches.filter(pc.equal(matches.column("cluster"), cluster))
            table = rows.select(["id", "duplicate_of", "similarity"]).rename_columns(
                ["id", "max_id", "cosine_sim_score"]
            )
            name = f"cluster_{cluster}.parquet"
            ds.write_file(storage.join(self.semdedup_pruning_tables_dir, name), table)
        self.computed_semantic_match_dfs = True

    def _matches(self) -> Any:
        """Every record's best higher-ranked match: (shard, id, duplicate_of, similarity,
        kind, cluster), from all parts."""
        import pyarrow as pa

        files = ds.shard_files(ds.folder_url(self.emb_by_clust_dir, "dups"))
        tables = [parquet.read_table(f.url, None) for f in files]
        if not tables:
            raise UsageError(f"{self.emb_by_clust_dir} has no dedup results")
        for f, table in zip(files, tables, strict=True):
            if ds.file_meta(table.schema).get("eps", 0) is not None:
                raise UsageError(f"{f.url} has a threshold's marks: run compute_semantic_match_dfs")
        return pa.concat_tables([t.replace_schema_metadata(None) for t in tables])

    def extract_dedup_data(self, eps_to_extract: float) -> DocumentDataset:
        """The records to remove (similarity to a higher-ranked one > 1 - eps): a
        ``DocumentDataset`` of id, ``cluster``, ``duplicate_of`` and ``cosine_sim_score``, also
        written to ``unique_ids_{eps}.parquet`` with a ``dedup_summary_{eps}.csv``."""
        import dask.dataframe as dd
        import pyarrow as pa

        if not self.computed_semantic_match_dfs:
            raise UsageError("Run compute_semantic_match_dfs before calling extract_dedup_data")
        if not isinstance(eps_to_extract, float):
            raise UsageError("eps_to_extract must be a float")
        matches = self._matches()
        sims = matches.column("similarity").to_numpy()
        hit = sims > 1.0 - eps_to_extract  # float32 against the threshold, as the core does
        removed = matches.filter(pa.array(hit)).sort_by(
            [("shard", "ascending"), ("id", "ascending")]
        )
        out = pa.table(
            {
                self.id_col: removed.column("id"),
                "cluster": removed.column("cluster"),
                "duplicate_of": removed.column("duplicate_of"),
                "cosine_sim_score": removed.column("similarity"),
            }
        )
        ds.write_file(storage.join(self.output_dir, f"unique_ids_{eps_to_extract}.parquet"), out)
        total = sum(
            parquet.num_rows(f.url, f.stem)
            for f in ds.shard_files(ds.folder_url(self.emb_by_clust_dir, "assign"))
        )
        summary = (
            f"eps,kept,removed,total\n{eps_to_extract},{total - len(out)},{len(out)},{total}\n"
        )
        storage.write_bytes(
            storage.join(self.output_dir, f"dedup_summary_{eps_to_extract}.csv"), summary.encode()
        )
        logger.info(
            "semantic dedup at eps %s: %d of %d records are duplicates",
            eps_to_extract,
            len(out),
            total,
        )
        return DocumentDataset(dd.from_pandas(to_frame(out), npartitions=1))
