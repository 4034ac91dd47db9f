"""A job in plain words (``node.consent_words``): every example job reads out, and the
facts a user decides on are there, from the signed document's own parts."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.coordinator.coordinator_kit import AI, PROVIDER, PURPOSE, tiny_job

from tessera.config import load_config
from tessera.jobs.document import DataRequest, JobSpec
from tessera.node.consent_words import (
    FIELDS,
    GUARANTEES,
    HOW_LONG,
    WHAT,
    WHO,
    JobWords,
    config_words,
    job_words,
)
from tessera.sandbox import SandboxLimits

EXAMPLES = Path(__file__).resolve().parents[2] / "src" / "tessera" / "examples"
AI_KEY = "a" * 64
PROVIDER_KEY = "b" * 64
DIGEST = "c" * 64


def words_of(name: str, **kwargs: object) -> JobWords:
    cfg = load_config(EXAMPLES / name)
    data = DataRequest(
        provider=PROVIDER_KEY,
        dataset="records",
        fields=tuple(cfg.data.features),
        user_field=cfg.partition.column or "user",
    )
    return config_words(
        cfg,
        job_id=f"{cfg.job.name}-0123456789abcdef",
        digest=DIGEST,
        ai_provider=AI_KEY,
        data=data,
        purpose=f"train {cfg.job.name}",
        **kwargs,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("name", sorted(p.name for p in EXAMPLES.glob("*.toml")))
def test_every_example_job_reads_out_in_five_parts(name: str) -> None:
    words = words_of(name)
    assert [s.title for s in words.sections] == [WHO, WHAT, FIELDS, HOW_LONG, GUARANTEES]
    assert all(s.sentences and all(x.strip() for x in s.sentences) for s in words.sections)
    assert words.digest == DIGEST and AI_KEY in words.text() and PROVIDER_KEY in words.text()


def test_chem97_says_who_what_which_fields_how_long_and_its_guarantees() -> None:
    words = words_of("chem97.toml", consent_days=14, min_consents=20)
    who = " ".join(words.section(WHO).sentences)
    assert f"key fingerprint is {AI_KEY}" in who
    what = " ".join(words.section(WHAT).sentences)
    assert "classification" in what and "“score” (the label)" in what
    assert "multi-layer perceptron" in what and "hidden layers of 16 units" in what
    fields = " ".join(words.section(FIELDS).sentences)
    assert "“gcsescore”, “gender”, “age”" in fields and "“records”" in fields
    assert "“school”" in fields and PROVIDER_KEY in fields
    how_long = " ".join(words.section(HOW_LONG).sentences)
    assert "At most 150 training round(s)" in how_long and "2 minute(s)" in how_long
    assert "holds for 14 day(s)" in how_long and "20 user(s)" in how_long
    assert "20%" in how_long  # fraction = 0.2 of the nodes a round
    guarantees = " ".join(words.section(GUARANTEES).sentences)
    assert "Secure aggregation" in guarantees and "k = 3" in guarantees
    assert "groups of about 16 nodes" in guarantees and "“lea”" in guarantees
    assert "No differential privacy" in guarantees
    assert "4 GiB of memory" in guarantees and "no network" in guarantees


def test_chem97_dp_states_its_epsilon_and_delta() -> None:
    guarantees = " ".join(words_of("chem97_dp.toml").section(GUARANTEES).sentences)
    assert "(3, 1e-05)-DP" in guarantees and "stops before it would spend more" in guarantees
    assert "No differential privacy" not in guarantees
    how_long = " ".join(words_of("chem97_dp.toml").section(HOW_LONG).sentences)
    assert "At most 30 training round(s)" in how_long


def test_the_poisoned_example_states_its_contribution_policy() -> None:
    cfg = load_config(EXAMPLES / "chem97_poisoned.toml")
    if cfg.contributions is None:
        pytest.skip("the example has no [contributions]")
    guarantees = " ".join(words_of("chem97_poisoned.toml").section(GUARANTEES).sentences)
    assert "Contribution policy" in guarantees


def test_a_signed_document_reads_out_with_its_full_digest_and_the_nodes_limits() -> None:
    doc, _ = tiny_job()
    spec = JobSpec.from_document(doc)  # verified, as the page reads it
    limits = SandboxLimits(memory_bytes=2 * 2**30, cpu_seconds=120)
    words = job_words(spec, consent_days=7, limits=limits)
    assert words.digest == doc.digest and len(words.digest) == 64
    assert words.job_id == spec.job_id and words.purpose == PURPOSE
    assert AI.public.fingerprint in words.text() and PROVIDER in words.text()
    assert "12 parameters" in words.text()  # the tiny job's linear model
    assert "2 GiB of memory, 120 CPU seconds" in words.text()
    assert "holds for 7 day(s)" in words.text()
    assert "No secure aggregation" in words.text()
    assert "2026-" in " ".join(words.section(WHO).sentences)  # when it was signed
