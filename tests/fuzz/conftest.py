"""Hypothesis settings profiles for the fuzz tests (the strategies are in mutations.py).

Two profiles:

- `small` (the default, what `make test` runs): derandomized, so every run tries the same inputs and a
  failure reproduces as it is; no example database (nothing written into the checkout); each target a
  few dozen examples, the whole directory adding about 20 s to the suite (2 cores).
- `long` (`GATEWAY_FUZZ_PROFILE=long`, what `make fuzz` runs): random, many more examples per target, an
  example database under `.hypothesis/` (git-ignored) so a failure found once is tried first next time,
  and a 10 s deadline per example (a hang fails). `GATEWAY_FUZZ_SEED=<int>` makes a long run repeatable.

The async targets also bound each call (`HANG_SECONDS`), in both profiles.

A test asks for its budget with `@fuzz(small=N)`: N examples in the small profile, `LONG_FACTOR` times
as many in the long one (at least `long=` when given).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

from hypothesis import HealthCheck, seed, settings
from hypothesis.database import DirectoryBasedExampleDatabase

PROFILE = os.environ.get("GATEWAY_FUZZ_PROFILE", "small")
SEED = os.environ.get("GATEWAY_FUZZ_SEED", "")
LONG_FACTOR = 20
HANG_SECONDS = 60

# Inputs are large (whole messages, resources) and the pipeline and API targets share function-scoped
# fixtures (a gateway per backend) across examples on purpose: both health checks would only get in the way.
_QUIET = [
    HealthCheck.too_slow,
    HealthCheck.data_too_large,
    HealthCheck.large_base_example,
    HealthCheck.filter_too_much,
    HealthCheck.function_scoped_fixture,
]

settings.register_profile(
    "small",
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=25,
    print_blob=True,
    suppress_health_check=_QUIET,
)
settings.register_profile(
    "long",
    derandomize=False,
    database=DirectoryBasedExampleDatabase(".hypothesis/examples"),
    # An input that takes this long is a hang (or a blow-up) to look at, not noise of a loaded machine.
    deadline=timedelta(seconds=10),
    max_examples=25 * LONG_FACTOR,
    print_blob=True,
    suppress_health_check=_QUIET,
)
if PROFILE not in ("small", "long"):
    raise ValueError(f"GATEWAY_FUZZ_PROFILE must be small or long, not {PROFILE!r}")
settings.load_profile(PROFILE)

F = TypeVar("F", bound=Callable[..., Any])


def fuzz(small: int, long: int | None = None) -> Callable[[F], F]:
    """The number of examples a target gets in the profile in force (and the long run's seed)."""
    examples = small if PROFILE == "small" else max(small * LONG_FACTOR, long or 0)

    def apply(test: F) -> F:
        decorated = settings(max_examples=examples)(test)
        if PROFILE == "long" and SEED:
            decorated = seed(int(SEED))(decorated)
        return decorated  # type: ignore[no-any-return]

    return apply
