"""airflow-curator: curate image-text WebDataset shards, natively in Apache Airflow."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from airflow_curator.dataset import ImageTextPairDataset

__all__ = ["ImageTextPairDataset", "__version__"]


def __getattr__(name: str) -> Any:
    # Lazy so that `import airflow_curator` (provider discovery) stays cheap.
    if name == "ImageTextPairDataset":
        from airflow_curator.dataset import ImageTextPairDataset

        return ImageTextPairDataset
    raise AttributeError(name)
