"""The line a private job opens with says what it promises and what the noise is,
statistics rounds included when a deployment releases them."""

from __future__ import annotations

from dataclasses import replace

from tessera.cli.main import privacy_line
from tessera.config import PrivacySection
from tessera.jobs.prepared import prepare_job
from tessera.jobs.privacy import privacy_params_of
from tessera.jobs.secure import summarize
from tessera.testing import example_config


def test_the_line_names_the_rounds_and_the_statistics_noise() -> None:
    cfg = example_config()
    cfg = cfg.model_copy(update={"privacy": PrivacySection(epsilon=3.0)})
    job = prepare_job(cfg)
    secure = summarize(job)
    line = privacy_line(job, secure)
    assert line is not None and "epsilon <= 3" in line and "statistics" not in line
    clip = job.recipe.clip_norm
    assert clip is not None
    deployed = privacy_params_of(cfg, clip_norm=clip, n_weights=job.layout.size, statistics=(90,))
    line = privacy_line(job, replace(secure, privacy=deployed), statistics_rounds=1)
    assert line is not None and "and 1 statistics round(s)" in line
    assert "scaled to norm 100" in line
    assert privacy_line(job, None) is None
