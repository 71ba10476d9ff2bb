import math

import pytest
import torch

from lightning_modules.nonfinite_guard import NonFiniteGuard, NonFiniteLossError


def test_skips_nonfinite_steps_and_stops_after_k_in_a_row() -> None:
    guard = NonFiniteGuard(max_consecutive=3)
    decisions = []
    for value in [1.0, math.nan, math.inf, 2.0, math.nan, math.nan]:
        guard.observe(torch.tensor(value))
        decisions.append(guard.should_step())
    assert decisions == [True, False, False, True, False, False]
    assert guard.skipped_total == 4 and guard.consecutive == 2
    guard.observe(torch.tensor(-math.inf))
    with pytest.raises(NonFiniteLossError, match="3 consecutive"):
        guard.should_step()


def test_the_flag_is_reduced_across_ranks() -> None:
    guard = NonFiniteGuard(max_consecutive=5)
    # Finite here, NaN on another rank: the reduced flag (min) says skip.
    guard.observe(torch.tensor(1.0), reduce=lambda flag: torch.minimum(flag, torch.tensor(0.0)))
    assert guard.should_step() is False
