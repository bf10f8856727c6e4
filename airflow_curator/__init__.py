"""airflow-curator: curate image-text WebDataset shards, natively in Apache Airflow.

The Python API is NeMo Curator 0.x's: every name below is importable from here (lazily, so
that ``import airflow_curator``, as Airflow's provider discovery does, stays cheap).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from airflow_curator.annotation import ClipImageEmbedder, ImageEmbedder, TimmImageEmbedder
    from airflow_curator.classifiers import AestheticClassifier, ImageClassifier, NsfwClassifier
    from airflow_curator.client import get_client
    from airflow_curator.dataset import ImageTextPairDataset
    from airflow_curator.semdedup import ClusteringModel, DocumentDataset, SemanticClusterLevelDedup

_LAZY = {
    "ImageTextPairDataset": "airflow_curator.dataset",
    "ImageEmbedder": "airflow_curator.annotation",
    "TimmImageEmbedder": "airflow_curator.annotation",
    "ClipImageEmbedder": "airflow_curator.annotation",
    "ImageClassifier": "airflow_curator.classifiers",
    "AestheticClassifier": "airflow_curator.classifiers",
    "NsfwClassifier": "airflow_curator.classifiers",
    "DocumentDataset": "airflow_curator.semdedup",
    "ClusteringModel": "airflow_curator.semdedup",
    "SemanticClusterLevelDedup": "airflow_curator.semdedup",
    "get_client": "airflow_curator.client",
}

__all__ = [
    "AestheticClassifier",
    "ClipImageEmbedder",
    "ClusteringModel",
    "DocumentDataset",
    "ImageClassifier",
    "ImageEmbedder",
    "ImageTextPairDataset",
    "NsfwClassifier",
    "SemanticClusterLevelDedup",
    "TimmImageEmbedder",
    "__version__",
    "get_client",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(name)
