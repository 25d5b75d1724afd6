"""The learning-rate schedule every training phase uses: one cycle (warm up, then anneal)."""

from __future__ import annotations

import torch


def one_cycle(opt: torch.optim.Optimizer, max_lr: float, steps: int, pct_start: float):
    """torch's OneCycleLR over ``steps``; a run too short for its warm-up still trains.

    OneCycleLR divides by the warm-up's length in steps, pct_start * steps - 1, which is zero for a
    short run (10 steps at 0.1): the warm-up then takes at least 1.5 steps, and a run of one or two
    steps trains at ``max_lr`` throughout. A run long enough keeps its schedule exactly.
    """
    if steps < 3:
        for group in opt.param_groups:
            group["lr"] = max_lr
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    pct = max(pct_start, min(0.5, 1.5 / steps))
    return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=max_lr, total_steps=steps, pct_start=pct)
