"""Hypothesis settings profiles of the fuzz tests: `quick` (the suite's default, a few minutes at
most in all) and `deep` (for a night, or after touching the API or the queue):

    CRMSYNC_FUZZ_PROFILE=deep .venv/bin/pytest tests/fuzz
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, Phase, settings

_COMMON = settings(
    deadline=None,
    database=None,
    derandomize=False,
    suppress_health_check=list(HealthCheck),
    phases=[Phase.explicit, Phase.generate, Phase.target, Phase.shrink],
)
settings.register_profile("quick", _COMMON, max_examples=25, stateful_step_count=15)
settings.register_profile("deep", _COMMON, max_examples=400, stateful_step_count=50)

FUZZ = settings.get_profile(os.environ.get("CRMSYNC_FUZZ_PROFILE", "quick"))


def scaled(fraction: float, at_least: int = 3) -> settings:
    """The profile with `fraction` of its examples (for the cheaper or costlier passes)."""
    return settings(FUZZ, max_examples=max(at_least, round(FUZZ.max_examples * fraction)))
