import io
import random

import numpy as np
import torch

from callbacks.rng_state import collect_rng_states, set_rng_states


def test_states_round_trip_through_a_weights_only_checkpoint() -> None:
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    buffer = io.BytesIO()
    torch.save({"rng": collect_rng_states()}, buffer)
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(99)
    np.random.seed(99)
    random.seed(99)
    buffer.seek(0)
    set_rng_states(torch.load(buffer, weights_only=True)["rng"])
    actual = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], actual[0])
    assert np.array_equal(expected[1], actual[1])
    assert expected[2] == actual[2]
