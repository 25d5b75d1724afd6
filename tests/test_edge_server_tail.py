"""The tail runner's fixed batch sizes (the CUDA path), checked for correctness on the CPU."""

import numpy as np
import torch

from splitserve.codecs import PayloadKind
from splitserve.edge_server.tail import DeviceWorker, TailRunner, fixed_batch_sizes


def test_fixed_batch_sizes_are_powers_of_two_up_to_the_largest_batch():
    assert fixed_batch_sizes(1) == (1,)
    assert fixed_batch_sizes(64) == (1, 2, 4, 8, 16, 32, 64)
    assert fixed_batch_sizes(48) == (1, 2, 4, 8, 16, 32, 48)


def frames(bundle, n: int, seed: int) -> np.ndarray:
    """A batch of n decoded latents (n, C, H, W) at the widest width."""
    g = torch.Generator().manual_seed(seed)
    shape = bundle.latent_shape(bundle.student.widths - 1)
    return torch.randint(-3, 4, (n, *shape), generator=g).float().numpy()


def test_padded_batches_give_each_frame_its_own_result(fmnist):
    worker = DeviceWorker(torch.device("cpu"))
    try:
        width = fmnist.student.widths - 1
        plain = TailRunner(fmnist, "entropic", PayloadKind.LATENT.batch_key(width), worker, max_batch=8)
        key = PayloadKind.LATENT.batch_key(width)
        padded = TailRunner(fmnist, "entropic", key, worker, max_batch=8, fixed_sizes=True)
        assert plain.sizes == () and padded.sizes == (1, 2, 4, 8)
        for n, seed in ((5, 0), (3, 1), (8, 2), (1, 3)):  # later batches run over rows left by earlier ones
            xs = frames(fmnist, n, seed)
            a, b = plain.run(xs, 3), padded.run(xs, 3)
            assert a.scores.shape == b.scores.shape == (n, 3)
            assert torch.equal(a.indices, b.indices)
            torch.testing.assert_close(a.scores, b.scores, rtol=1e-4, atol=1e-5)
        assert padded._staging is not None and padded._staging.shape[0] == 8
    finally:
        worker.shutdown()


def test_warm_up_runs_every_fixed_size(fmnist):
    worker = DeviceWorker(torch.device("cpu"))
    try:
        runner = TailRunner(fmnist, "entropic", PayloadKind.LATENT.batch_key(0), worker, max_batch=16, fixed_sizes=True)
        seen = []
        runner.module.register_forward_pre_hook(lambda _, args: seen.append(args[0].shape[0]))
        runner.warm_up()
        assert seen == [1, 2, 4, 8, 16]
        seen.clear()
        # the CPU default: no padding, so one warm-up run (the same module: the bundle caches it)
        TailRunner(fmnist, "entropic", PayloadKind.LATENT.batch_key(0), worker, max_batch=16).warm_up()
        assert seen == [1]
    finally:
        worker.shutdown()
