"""Two gloo processes distil the same coreset as one process does."""

import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from edgekws.features import FeatureConfig
from edgekws.server.distributed import Comm, current_comm, init_from_env
from edgekws.server import rfad
from edgekws.server.rfad import RFADConfig, distill

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")


def _data(seed: int = 3, n_per: int = 30, h: int = 8, w: int = 12):
    rng = np.random.default_rng(seed)
    means = np.zeros((3, h, w), np.float32)
    means[0, :3] = 0.4
    means[1, -3:] = 0.4
    means[2, :, 4:8] = 0.4
    y = np.repeat(np.arange(3), n_per)
    x = (means[y] + rng.standard_normal((len(y), h, w))).astype(np.float32)
    return x, y


def _cfg() -> RFADConfig:
    # 5 pool nets over 2 ranks: rank 0 owns 0, 2, 4 and rank 1 owns 1, 3 - steps sample uneven shares, sometimes none
    return RFADConfig(per_class=2, steps=6, n_models=3, pool_size=5, width=8, depth=2, lr=0.03, label_lr=0.03,
                      batch_size=60, eval_every=2, patience=0, seed=7, device="cpu", loss="platt")


def _run(comm=None):
    x, y = _data()
    xv, yv = _data(seed=4, n_per=10)
    cfg = FeatureConfig(normalization="none", clip_seconds=x.shape[2] * 0.02 + 0.03, n_mfcc=x.shape[1])
    return distill(x, y, xv, yv, ["a", "b", "c"], cfg, _cfg(), comm=comm)


def _worker(rank: int, world: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        comm = current_comm()
        assert comm.world == world and comm.rank == rank
        core = _run()
        np.savez(f"{out}/rank{rank}.npz", x=core.x, y=core.y, acc=core.metrics["val_accuracy"],
                 hist=np.array([h["val_accuracy"] for h in core.metrics["history"]]),
                 procs=core.metrics["processes"])
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_feature_config_shape_matches_toy_data():
    x, _ = _data()
    cfg = FeatureConfig(normalization="none", clip_seconds=x.shape[2] * 0.02 + 0.03, n_mfcc=x.shape[1])
    assert cfg.shape == x.shape[1:]


def test_two_gloo_processes_match_one_process(tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the workers: a matmul's summation order may depend on the thread count
    try:
        single = _run(Comm())
    finally:
        torch.set_num_threads(threads)
    mp.start_processes(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True, start_method="spawn")
    r0, r1 = np.load(tmp_path / "rank0.npz"), np.load(tmp_path / "rank1.npz")
    assert int(r0["procs"]) == 2
    # the ranks hold the identical coreset ...
    np.testing.assert_array_equal(r0["x"], r1["x"])
    np.testing.assert_array_equal(r0["y"], r1["y"])
    # ... and it is the single-process coreset, bit for bit: every net's share is computed alone and the shares
    # are summed in the same order whatever the number of processes
    x, y = _data()
    init = x[rfad._balanced_indices(y, 2, 3, np.random.default_rng([7, 1]))]
    assert single.metrics["best_step"] > 0 and np.abs(single.x - init).max() > 0.05  # it did move
    np.testing.assert_array_equal(r0["x"], single.x)
    np.testing.assert_array_equal(r0["y"], single.y)
    np.testing.assert_array_equal(r0["hist"], [h["val_accuracy"] for h in single.metrics["history"]])


def test_without_torchrun_the_process_is_alone(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    comm = init_from_env()
    assert (comm.rank, comm.world, comm.is_main) == (0, 1, True)
    assert all(comm.owns(j) for j in range(5))
    t = torch.ones(3)
    assert comm.all_reduce_(t) is t and torch.equal(t, torch.ones(3))
