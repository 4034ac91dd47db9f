"""Job files: every mistake is one ConfigError that names its field."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from tessera.config import load_config, parse_config
from tessera.errors import ConfigError

EXAMPLES = Path(__file__).resolve().parents[1] / "src" / "tessera" / "examples"

BASE = {
    "job": {"name": "t", "task": "classification"},
    "data": {"source": "sklearn", "dataset": "digits", "target": "target"},
    "partition": {"scheme": "iid", "nodes": 4},
    "model": {"kind": "linear"},
    "recipe": {"clip_norm": 5.0},
    "federation": {"rounds": 2},
}


def with_(path: str, value: object) -> dict:
    raw = copy.deepcopy(BASE)
    *parents, last = path.split(".")
    node = raw
    for p in parents:
        node = node.setdefault(p, {})
    node[last] = value
    return raw


@pytest.mark.parametrize("name", ["chem97.toml", "digits.toml"])
def test_examples_are_valid(name: str) -> None:
    cfg = load_config(EXAMPLES / name)
    assert cfg.federation.rounds > 0


REPO_EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_the_repository_has_its_examples() -> None:
    names = {p.name for p in REPO_EXAMPLES.glob("*.toml")}
    assert {"chem97.toml", "exam.toml", "star_math.toml", "star_reading.toml"} <= names
    assert {"hsb82_high.toml", "chem97_grades.toml"} <= names


@pytest.mark.parametrize("path", sorted(REPO_EXAMPLES.glob("*.toml")), ids=lambda p: p.name)
def test_every_example_job_file_parses(path: Path) -> None:
    """examples/*.toml (the bundled ones and the benchmark's education tables)."""
    cfg = load_config(path)
    assert cfg.federation.rounds > 0 and cfg.data.target
    packaged = EXAMPLES / path.name
    if packaged.exists():  # the copy `tessera examples` ships is the same file
        assert packaged.read_text(encoding="utf-8") == path.read_text(encoding="utf-8")


def test_defaults_fill_in() -> None:
    cfg = parse_config(BASE)
    assert cfg.loss == "cross_entropy"
    assert cfg.strategy.name == "fedavg" and cfg.strategy.params == {}
    assert parse_config(with_("job.task", "regression")).loss == "mse"


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        ("recipe.lr", -1.0, "recipe.lr"),
        ("recipe.batch_size", "big", "recipe.batch_size"),
        ("model.kind", "transformer", "model.kind"),
        ("model.hidden", [16, 0], "model.hidden.1"),
        ("job.task", "ranking", "job.task"),
        ("federation.fraction", 1.5, "federation.fraction"),
        ("data.source", "s3", "data.source"),
        ("partition.nodes", None, "partition"),
        ("recipe.learning_rate", 0.1, "recipe.learning_rate"),
    ],
)
def test_bad_fields_are_named(path: str, value: object, field: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(with_(path, value))
    assert err.value.field == field, err.value


def test_secure_jobs_need_a_clipping_bound() -> None:
    raw = copy.deepcopy(BASE)
    del raw["recipe"]
    with pytest.raises(ConfigError) as err:
        parse_config(raw)
    assert err.value.field == "recipe.clip_norm"
    raw["secure"] = {"enabled": False}
    assert parse_config(raw).recipe.clip_norm is None


def test_unknown_field_message_says_spelling() -> None:
    with pytest.raises(ConfigError, match="spelling"):
        parse_config(with_("recipe.learning_rate", 0.1))


def test_missing_section_is_named() -> None:
    raw = copy.deepcopy(BASE)
    del raw["model"]
    with pytest.raises(ConfigError) as err:
        parse_config(raw)
    assert err.value.field == "model"


def test_unreadable_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[job\nname=1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)


@pytest.mark.parametrize(
    ("partition", "says"),
    [
        ({"scheme": "natural", "column": "school", "nodes": 10}, "value of partition.column"),
        ({"scheme": "per_record", "nodes": 10}, "one node per record"),
    ],
)
def test_nodes_is_refused_where_the_data_decide_the_nodes(
    partition: dict[str, object], says: str
) -> None:
    """It used to be ignored silently (issue 12): a job file says what happens, or fails."""
    raw = {**copy.deepcopy(BASE), "partition": partition}
    with pytest.raises(ConfigError, match=says) as err:
        parse_config(raw)
    assert err.value.field == "partition"


def declared(categories: object, categorical: tuple[str, ...] = ("g",)) -> dict:
    raw = with_("data.categorical", list(categorical))
    raw["data"]["categories"] = categories
    return raw


def test_declared_categories_parse_in_order_with_their_types() -> None:
    cfg = parse_config(declared({"g": ["M", "F", 2, 2.5, True]}))
    assert cfg.data.categories == {"g": ["M", "F", 2, 2.5, True]}
    assert [type(v) for v in cfg.data.categories["g"]] == [str, str, int, float, bool]


@pytest.mark.parametrize(
    ("raw", "field", "message"),
    [
        (declared({"g": []}), "data.categories", "g: must list 1 to 10,000 values, got 0"),
        (declared({"g": [1, 1.0]}), "data.categories", "g: 1 listed twice (2 and 2.0 are one)"),
        (declared({"g": [float("nan")]}), "data.categories", "g: numbers must be finite"),
        (
            declared({"g": [[1]]}),
            "data.categories",
            "g: [1] is not a string, a number or a boolean",
        ),
        (
            declared({"h": ["a"]}),
            "data",
            "categories.h: 'h' is not listed in categorical (list it there: categories are a "
            "categorical feature's)",
        ),
        (
            declared({"target": ["a"]}, ("target",)),
            "data",
            "categories.target: the target's classes are not declared, only a categorical "
            "feature's categories",
        ),
    ],
)
def test_declared_categories_are_checked(raw: dict, field: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(raw)
    assert (err.value.field, err.value.message) == (field, message)


def test_declared_categories_are_told_apart_as_statistics_name_them() -> None:
    from tessera.config import _category_key
    from tessera.data.statistics import category_of

    for value in ["a", "2", 2, 2.0, 2.5, -0.0, True, False, 0, 1, 1e20, 10**30]:
        assert _category_key(value) == category_of(value), value


def test_contributions_disclose_group_sums_at_a_floor() -> None:
    from tessera.jobs.prepared import secure_params_of

    assert not parse_config(BASE).group_sums  # off unless the job asks
    cfg = parse_config(with_("contributions", {}))
    assert cfg.group_sums and cfg.contributions is not None
    assert cfg.contributions.min_group is None
    params = secure_params_of(cfg, clip_norm=5.0, max_weight=10.0, classes=2)
    assert params.group_sums and params.disclosure == 2  # secure.min_group's default
    raw = with_("contributions", {"min_group": 5})
    raw["secure"] = {"min_group": 3}
    params = secure_params_of(parse_config(raw), clip_norm=5.0, max_weight=10.0, classes=2)
    assert params.disclosure == 5
    raw["contributions"] = {"enabled": False}  # a switched-off section discloses nothing
    params = secure_params_of(parse_config(raw), clip_norm=5.0, max_weight=10.0, classes=2)
    assert not params.group_sums


@pytest.mark.parametrize(
    ("sections", "field", "message"),
    [
        ({"contributions": {"min_group": 1}}, "contributions.min_group", "greater than or equal"),
        ({"contributions": {"min_group": 17}}, "contributions.min_group", "group_size = 16"),
        ({"contributions": {}, "privacy": {"epsilon": 1.0}}, "contributions", "not be as private"),
        ({"contributions": {}, "secure": {"enabled": False}}, "contributions", "enable [secure]"),
        ({"contributions": {}, "secure": {"backups": 3}}, "contributions", "backups below"),
        ({"contributions": {"share": 0.5}}, "contributions.share", "spelling"),
    ],
)
def test_contributions_are_refused_where_they_would_leak(
    sections: dict, field: str, message: str
) -> None:
    raw = copy.deepcopy(BASE) | sections
    with pytest.raises(ConfigError) as err:
        parse_config(raw)
    assert err.value.field == field and message in str(err.value), err.value
    raw["contributions"] = {"enabled": False}  # switched off: nothing to refuse
    if field == "contributions":
        parse_config(raw)
