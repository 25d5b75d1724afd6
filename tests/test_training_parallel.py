"""Data-parallel training: `splitserve train` under torchrun, two CPU processes on gloo."""

import subprocess

import pytest
import torch
from conftest import BIN
from test_training import SMOKE

from splitserve.models.bundle import Bundle
from splitserve.training.parallel import Sharded, World, steps_per_epoch


class _Numbers:
    """A frame source of numbered batches, to see which rank gets which."""

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def batches(self, batch_size, generator):
        order = torch.randperm(self.n, generator=generator)
        for start in range(0, self.n, batch_size):
            yield order[start : start + batch_size]


def test_shards_are_disjoint_complete_and_equal_in_count():
    seen = []
    counts = []
    for rank in range(3):
        world = World.__new__(World)
        world.size, world.rank, world.local_rank = 3, rank, 0
        got = list(Sharded(_Numbers(100), world).batches(10, torch.Generator().manual_seed(1)))
        counts.append(len(got))
        seen.append(torch.cat(got).tolist())
    assert counts == [3, 3, 3]  # 10 batches: the incomplete last group of one is dropped
    # what a learning-rate schedule plans for is what each rank runs (len // size would say 4)
    assert steps_per_epoch(Sharded(_Numbers(100), world), 10) == 3
    assert steps_per_epoch(Sharded(_Numbers(95), world), 10) == 3
    assert steps_per_epoch(_Numbers(95), 10) == 10
    flat = [x for s in seen for x in s]
    assert len(flat) == len(set(flat)) == 90


@pytest.mark.slow
def test_torchrun_two_gloo_processes_train_one_bundle(tmp_path):
    cfg = SMOKE.replace("epochs = 2\nbatch_size = 64\nnormalize", "epochs = 1\nbatch_size = 64\nnormalize")
    (tmp_path / "smoke.toml").write_text(cfg)
    proc = subprocess.run(
        [str(BIN / "torchrun"), "--standalone", "--nproc-per-node", "2", "-m", "splitserve.cli", "train",
         "--config", str(tmp_path / "smoke.toml"), "--out", str(tmp_path / "m"), "--work", str(tmp_path / "w"),
         "--device", "cpu", "--no-progress"],
        capture_output=True, text=True, timeout=600, env={"OMP_NUM_THREADS": "1", "PATH": str(BIN)},
    )  # fmt: skip
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "rank 1 of 2 (gloo backend)" in log and "rank 0 of 2 (gloo backend)" in log
    # both ranks ended with the same weights (the run checks and fails otherwise), and one bundle was written
    assert "student: weights identical on all 2 ranks" in log
    assert log.count("wrote ") == 1
    bundle = Bundle.load(tmp_path / "m" / "smoke" / "1")
    assert all(w["bytes_mean"] > 0 for w in bundle.widths)
