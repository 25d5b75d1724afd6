"""Train a teacher classifier from scratch (for datasets with no pretrained teacher, e.g. Fashion-MNIST)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from splitserve.training.config import TeacherSection
from splitserve.training.data import TrainData
from splitserve.training.parallel import World, sharded
from splitserve.training.schedule import one_cycle


@torch.inference_mode()
def accuracy(model: nn.Module, pre: nn.Module, data: TrainData, device: torch.device, batch: int = 512) -> float:
    model.eval()
    correct = 0
    for start in range(0, len(data.test_images), batch):
        x = torch.from_numpy(data.test_images[start : start + batch]).to(device)
        y = torch.from_numpy(data.test_labels[start : start + batch]).to(device)
        correct += int((model(pre(x)).argmax(1) == y).sum())
    return correct / len(data.test_images)


def train_epoch(
    model: nn.Module,
    pre: nn.Module,
    data: TrainData,
    cfg: TeacherSection,
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler,
    gen: torch.Generator,
    device: torch.device,
    desc: str,
    progress: bool = True,
    world: World | None = None,
) -> float:
    world = world or World()
    model.train()
    source = sharded(data.train, world)
    bar = tqdm(total=len(source), desc=desc, unit="img", leave=False, disable=not progress)
    total, seen = 0.0, 0
    for x, y in source.batches(cfg.batch_size, gen):
        x, y = x.to(device), y.to(device)
        loss = F.cross_entropy(model(pre(x)), y, label_smoothing=0.05)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        world.average_gradients(model.parameters())
        opt.step()
        sched.step()
        total += loss.item() * len(x)
        seen += len(x)
        bar.update(len(x))
        bar.set_postfix(loss=f"{total / seen:.3f}")
    bar.close()
    world.average_buffers(model)
    return total / max(seen, 1)


def make_optimizer(model: nn.Module, cfg: TeacherSection, steps: int):
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=5e-4)
    sched = one_cycle(opt, cfg.lr, steps, 0.15)
    return opt, sched
