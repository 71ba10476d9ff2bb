from unittest import mock

import pytest

from datamodules.samplers import EvalSampler, TrainSampler


def test_train_sampler_stream_is_seeded_and_whole_batches() -> None:
    sampler = TrainSampler(10, batch_size=3, seed=3)
    first = list(sampler)
    assert len(first) == len(sampler) == 9  # the tail that does not fill a batch is dropped
    assert len({i for i, _ in first}) == 9 and {e for _, e in first} == {0}
    assert list(TrainSampler(10, batch_size=3, seed=3)) == first
    assert list(TrainSampler(10, batch_size=3, seed=4)) != first


def test_train_sampler_starts_at_the_global_step() -> None:
    step = 0
    sampler = TrainSampler(10, batch_size=3, seed=0, global_step=lambda: step)
    stream = list(sampler)
    step = 3  # one epoch (3 batches) done
    second_epoch = list(sampler)
    assert {e for _, e in second_epoch} == {1}
    step = 4  # resumed one batch into the second epoch: continue the same stream
    resumed = list(sampler)
    assert resumed[:6] == second_epoch[3:]
    assert {e for _, e in resumed[6:]} == {2}
    assert stream != second_epoch


def test_ddp_ranks_split_the_single_process_global_batch() -> None:
    single = [i for i, _ in TrainSampler(10, batch_size=4, seed=0)]  # 2 steps of 4
    shards = []
    for rank in range(2):
        with mock.patch("datamodules.samplers._rank_and_world", return_value=(rank, 2)):
            sampler = TrainSampler(10, batch_size=2, seed=0)
            shards.append([i for i, _ in sampler])
            assert len(sampler) == 4
    for step in range(2):  # each DDP step = the single-process step, rank 0 first
        assert (
            shards[0][2 * step : 2 * step + 2] + shards[1][2 * step : 2 * step + 2]
            == single[4 * step : 4 * step + 4]
        )


def test_train_sampler_too_small_for_a_batch() -> None:
    with pytest.raises(ValueError, match="data.batch_size"):
        TrainSampler(3, batch_size=4)


def test_eval_sampler_covers_every_index_with_padding() -> None:
    assert list(EvalSampler(5)) == [0, 1, 2, 3, 4]
    shards = []
    for rank in range(2):
        with mock.patch("datamodules.samplers._rank_and_world", return_value=(rank, 2)):
            shards.append(list(EvalSampler(5)))
    assert shards == [[0, 2, 4], [1, 3, 0]]
