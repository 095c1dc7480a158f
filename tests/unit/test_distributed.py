"""Data-parallel pieces of the engine: shard loaders, and metric counts summed over a real
``torch.distributed`` gloo group of two processes."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers import free_port

from edgeseg.engine.loop import World, make_loader
from edgeseg.metrics import MetricAccumulator


class IndexDataset(torch.utils.data.Dataset):
    """Samples that carry only their index, collated by the engine's own collate function."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> int:
        return index


def indices_seen(world: World, n: int, *, shuffle: bool, epoch: int, batch_size: int = 3) -> list[int]:
    loader = make_loader(
        IndexDataset(n), batch_size, shuffle=shuffle, seed=7, epoch=epoch, workers=0, world=world
    )
    loader.collate_fn = lambda items: items  # type: ignore[assignment]  # plain ints, not ROI samples
    return [i for batch in loader for i in batch]


@pytest.mark.parametrize("n", [10, 11, 12])
def test_evaluation_shards_are_disjoint_and_cover_the_data_once(n):
    shards = [indices_seen(World(rank, 3), n, shuffle=False, epoch=0) for rank in range(3)]
    assert sorted(i for shard in shards for i in shard) == list(range(n))


@pytest.mark.parametrize("n", [10, 11])
def test_training_shards_split_one_shuffled_order_with_equal_lengths(n):
    epoch1 = [indices_seen(World(rank, 2), n, shuffle=True, epoch=1) for rank in range(2)]
    assert len(epoch1[0]) == len(epoch1[1]) == -(-n // 2)  # equal steps on every rank
    assert set(epoch1[0]) | set(epoch1[1]) == set(range(n))
    # disjoint except for the one image that pads an odd data set
    assert len(set(epoch1[0]) & set(epoch1[1])) == (n % 2)
    again = [indices_seen(World(rank, 2), n, shuffle=True, epoch=1) for rank in range(2)]
    assert again == epoch1  # a resumed epoch sees the same order
    epoch2 = [indices_seen(World(rank, 2), n, shuffle=True, epoch=2) for rank in range(2)]
    assert epoch2 != epoch1  # and every epoch is shuffled anew


def test_one_process_is_rank_0_of_1_and_its_collectives_are_identities():
    world = World.current()
    assert world == World(0, 1)
    assert world.all_ranks(True) and not world.all_ranks(False)
    assert world.sum([1.5, 2.0]) == [1.5, 2.0]


def _batch(seed: int, n: int = 6, size: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, 3, size, size, generator=g)
    targets = torch.randint(0, 3, (n, size, size), generator=g)
    return logits, targets


def _rank_main(rank: int, port: int, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        world = World.current()
        accumulator = MetricAccumulator()
        for seed in range(rank, 5, 2):  # rank 0: batches 0, 2, 4; rank 1: batches 1, 3
            accumulator.update(*_batch(seed))
        accumulator.merge_ranks(world.sum)
        out[rank] = SimpleNamespace(
            world=world,
            metrics=accumulator.compute(),
            all_true=world.all_ranks(True),
            one_false=world.all_ranks(rank == 0),
        ).__dict__
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(120)
def test_metrics_summed_over_two_gloo_ranks_equal_one_process_over_all_batches():
    manager = mp.Manager()
    out = manager.dict()
    mp.spawn(_rank_main, args=(free_port(), out), nprocs=2, join=True)
    whole = MetricAccumulator()
    for seed in range(5):
        whole.update(*_batch(seed))
    expected = whole.compute()
    for rank in (0, 1):
        result = out[rank]
        assert result["world"] == World(rank, 2)
        assert result["all_true"] is True and result["one_false"] is False
        assert result["metrics"].keys() == expected.keys()
        for key, value in expected.items():
            assert result["metrics"][key] == pytest.approx(value, rel=1e-12, nan_ok=True), key
