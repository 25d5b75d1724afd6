"""The two training stages of the Entropic Student, with slimmable widths.

Stage 1 (head distillation): the teacher is frozen; the student encoder,
priors and decoder learn to reproduce the teacher's features at the split and
at later layers (MSE) while the priors' likelihoods charge each bit (beta * rate).
Every step trains the widest and the narrowest width plus random ones between
(the sandwich rule), so one set of weights serves every width.

Stage 2 (tail fine-tuning): the encoder and priors are frozen and turned into
integer tables once (``update()``); the decoder (and optionally the tail) learn
on the codec's real quantized features with 0.5 * CE + 0.5 * KL to the teacher.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from splitserve.codecs.entropic import EntropyTables
from splitserve.models.bottleneck import EntropicStudent, rate_bits, symbol_likelihoods
from splitserve.training.config import Stage1Section, Stage2Section
from splitserve.training.data import TrainData
from splitserve.training.parallel import World, sharded, steps_per_epoch
from splitserve.training.schedule import one_cycle


def sandwich(widths: int, extra: int, rng: random.Random) -> list[int]:
    """Widest, narrowest and ``extra`` random widths between (each at most once)."""
    chosen = [widths - 1] if widths == 1 else [widths - 1, 0]
    middle = list(range(1, widths - 1))
    chosen += rng.sample(middle, min(extra, len(middle)))
    return chosen


@dataclass
class Teacher:
    """The frozen teacher cut at the split: head, and a tail that also returns tapped layers."""

    pre: nn.Module
    head: nn.Module
    tapped_tail: nn.Module  # features -> (logits, [tapped outputs])

    @torch.no_grad()
    def targets(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        feats = self.head(self.pre(x))
        logits, taps = self.tapped_tail(feats)
        return feats, logits, taps


def teacher_views(student: EntropicStudent, teacher: Teacher, frames, batch: int, gen: torch.Generator,  # type: ignore[no-untyped-def]
                  device: torch.device, share: bool):  # fmt: skip
    """(prefix output, split features, teacher logits) for each batch of frames, computed without gradients.

    ``share``: the student's prefix ends at the split, so its output is the very target and runs once.
    """
    # depthwise convolutions at high resolution run ~1.5x faster channels-last, on CPU and GPU
    for frozen in (student.encoder.prefix, teacher.head, teacher.tapped_tail):
        frozen.to(memory_format=torch.channels_last)
    for x, _ in frames.batches(batch, gen):
        # computed per batch, not around the loop: a no_grad held across a yield would switch
        # gradients off in the training step that consumes the batch
        yield _views_of(student, teacher, x.to(device), share)


def _views_of(student: EntropicStudent, teacher: Teacher, x: torch.Tensor, share: bool):  # type: ignore[no-untyped-def]
    # frozen layers need no fp32 on a GPU: fp16 runs them several times faster (their
    # ReLU6 activations are bounded), and what they produce is used as fp32
    with torch.no_grad(), torch.autocast("cuda", torch.float16, enabled=x.device.type == "cuda"):
        xp = teacher.pre(x).contiguous(memory_format=torch.channels_last)
        prefix_out = student.encoder.prefix(xp)
        feats = prefix_out if share else teacher.head(xp)
        logits = teacher.tapped_tail(feats)[0]
    return prefix_out.float().contiguous(), feats.float().contiguous(), logits.float()


class CachedTargets:
    """Training from precomputed tensors, for students that start with the teacher's frozen layers.

    With a frozen prefix and no tapped tail layers, every step would recompute
    the same teacher work; instead ``count`` frames (augmented views, drawn once)
    go through the prefix and the teacher once, and both stages train on the
    prefix output, the teacher's split features and its logits (fp16, in memory).
    This is what makes a 224 x 224 teacher trainable on a laptop-class CPU.
    """

    def __init__(
        self,
        student: EntropicStudent,
        teacher: Teacher,
        frames,  # type: ignore[no-untyped-def]
        count: int,
        batch: int,
        gen: torch.Generator,
        device: torch.device,
        progress: bool = True,
        share: bool = False,
    ) -> None:
        inputs, targets, logits = [], [], []
        bar = tqdm(total=count, desc="caching teacher outputs", unit="img", leave=False, disable=not progress)
        cached = 0
        while cached < count:
            for prefix_out, feats, lg in teacher_views(student, teacher, frames, batch, gen, device, share):
                inputs.append(prefix_out.half().cpu())
                if not share:
                    targets.append(feats.half().cpu())
                logits.append(lg.half().cpu())
                cached += len(lg)
                bar.update(len(lg))
                if cached >= count:
                    break
        bar.close()
        self.inputs = torch.cat(inputs)[:count]
        self.targets = self.inputs if share else torch.cat(targets)[:count]
        self.logits = torch.cat(logits)[:count]
        self.device = device

    def __len__(self) -> int:
        return len(self.inputs)

    def batches(self, batch_size: int, gen: torch.Generator):  # type: ignore[no-untyped-def]
        """(prefix output, split features, teacher logits) batches, shuffled."""
        order = torch.randperm(len(self.inputs), generator=gen)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            yield tuple(t[idx].to(self.device).float() for t in (self.inputs, self.targets, self.logits))


class FreshTargets:
    """The same tensors as ``CachedTargets``, but of new views every epoch (``[stage1] cache = 0``).

    Function matching's point is that the student never sees a view twice; where the
    teacher is cheap (a GPU), nothing is gained by fixing the views, so none are.
    """

    def __init__(self, student: EntropicStudent, teacher: Teacher, frames, device: torch.device,  # type: ignore[no-untyped-def]
                 share: bool = False) -> None:  # fmt: skip
        self.student, self.teacher, self.frames = student, teacher, frames
        self.device, self.share = device, share

    def __len__(self) -> int:
        return len(self.frames)

    def steps(self, batch_size: int) -> int:
        return steps_per_epoch(self.frames, batch_size)

    def batches(self, batch_size: int, gen: torch.Generator):  # type: ignore[no-untyped-def]
        yield from teacher_views(self.student, self.teacher, self.frames, batch_size, gen, self.device, self.share)


def distortion(student: torch.Tensor, teacher: torch.Tensor, normalize: bool) -> torch.Tensor:
    mse = F.mse_loss(student, teacher)
    return mse / teacher.var().clamp(min=1e-6) if normalize else mse


def adapt_beta(betas: list[float], width: int, bits: float, target: float, lr: float) -> None:
    """Dual ascent on one width's rate constraint, gently, in log space (at most 1 % a step)."""
    error = float(np.log(max(bits, 1e-3) / target))
    betas[width] *= float(np.exp(np.clip(lr * error, -0.01, 0.01)))


def stage1_epoch(
    student: EntropicStudent,
    teacher: Teacher,
    data: TrainData,
    cfg: Stage1Section,
    opt: torch.optim.Optimizer,
    aux_opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler,
    gen: torch.Generator,
    rng: random.Random,
    device: torch.device,
    desc: str,
    betas: list[float],
    progress: bool = True,
    views: CachedTargets | FreshTargets | None = None,
    world: World | None = None,
) -> dict[str, float]:
    """One epoch of stage 1. ``betas`` (one per width) adapts in place under rate control."""
    world = world or World()
    student.train()
    n = student.cfg.widths
    source = views if views is not None else sharded(data.train, world)
    bar = tqdm(total=len(source), desc=desc, unit="img", leave=False, disable=not progress)
    sums = {"loss": 0.0, "mse": 0.0, "bits": 0.0}
    width_bits: dict[int, list[float]] = {}
    seen = 0
    for batch in source.batches(cfg.batch_size, gen):
        if views is not None:  # the prefix's output, the split features, the teacher's logits
            xp, feats, logits = batch
            x, taps = xp, []
        else:
            x = batch[0].to(device)
            feats, logits, taps = teacher.targets(x)
            xp = teacher.pre(x)
        loss = torch.zeros((), device=device)
        for w in sandwich(n, cfg.random_widths, rng):
            f_hat, lik = student(xp, w, prefixed=views is not None, rate=cfg.rate_proxy)
            logits_hat, taps_hat = teacher.tapped_tail(f_hat) if (taps or cfg.kd_weight) else (None, [])
            mse = sum(
                (distortion(a, b, cfg.normalize) for a, b in zip([f_hat, *taps_hat], [feats, *taps], strict=True)),
                torch.zeros((), device=device),
            )
            if cfg.kd_weight and logits is not None:
                mse = mse + cfg.kd_weight * F.kl_div(
                    F.log_softmax(logits_hat, 1), F.log_softmax(logits, 1), log_target=True, reduction="batchmean"
                )
            bits = rate_bits(lik).mean()
            loss = loss + mse + betas[w] * bits
            if cfg.target_bits:
                adapt_beta(betas, w, world.mean(bits.item()), cfg.target_bits[w], cfg.beta_lr)
            if w == n - 1:
                sums["mse"] += mse.item() * len(x)
                sums["bits"] += bits.item() * len(x)
            width_bits.setdefault(w, []).append(bits.item())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        world.average_gradients(student.parameters())
        torch.nn.utils.clip_grad_norm_(student.parameters(), 5.0)
        opt.step()
        sched.step()
        aux = student.aux_loss()
        aux_opt.zero_grad(set_to_none=True)
        aux.backward()
        aux_opt.step()
        sums["loss"] += loss.item() * len(x)
        seen += len(x)
        bar.update(len(x))
        bar.set_postfix(loss=f"{sums['loss'] / seen:.4f}", bits=f"{sums['bits'] / seen:.0f}")
    bar.close()
    world.average_buffers(student)
    stats = {k: v / max(seen, 1) for k, v in sums.items()}
    stats["bits_by_width"] = [round(float(np.mean(width_bits.get(w, [0.0]))), 1) for w in range(n)]
    stats["betas"] = [float(f"{b:.3g}") for b in betas]
    return stats


class WeightAverage:
    """An exponential moving average of the student's and the tail's weights over stage 2's steps.

    A few hundred images give noisy gradients: the last step's weights sit wherever the
    last batches pushed them, and the average of the recent ones usually generalizes better
    (Polyak averaging, as timm's ModelEma does it). BatchNorm statistics are
    averaged with the weights, so the averaged model needs no extra pass over the data. Frozen
    weights (the prefix, the priors, a tail that is not fine-tuned) stay bit-exact: the
    average of a constant is that constant.
    """

    def __init__(self, student: EntropicStudent, tail: nn.Module, decay: float) -> None:
        self.source = nn.ModuleDict({"student": student, "tail": tail})
        self.average = AveragedModel(self.source, multi_avg_fn=_ema_of_floats(decay), use_buffers=True)

    def update(self) -> None:
        self.average.update_parameters(self.source)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.average.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.average.load_state_dict(state)

    def weights(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """The averaged (student, tail) state dicts."""
        module = self.average.module
        return module["student"].state_dict(), module["tail"].state_dict()


def _ema_of_floats(decay: float):  # type: ignore[no-untyped-def]
    """torch's EMA for floating-point tensors; counters (BatchNorm's num_batches_tracked) are copied.

    AveragedModel calls this once per (device, dtype) group, so each call sees one kind."""
    ema = get_ema_multi_avg_fn(decay)

    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], count: torch.Tensor) -> None:
        if averaged[0].is_floating_point():
            ema(averaged, current, count)
        else:
            torch._foreach_copy_(averaged, current)

    return update


def add_to_soup(soup: dict[str, Any] | None, member: dict[str, Any], count: int) -> dict[str, Any]:
    """The uniform average of ``count`` members' weights, from that of the first ``count - 1``.

    A model soup (Wortsman et al. 2022): stage 2 run several times from the same stage-1
    weights, with different random streams, ends in one basin, so the average of the runs
    is a model of its own, better than the typical run and far less a matter of luck.
    ``member`` and the soup are {"student": state dict, "tail": state dict}. Weights every
    member shares (the prefix, the priors, a frozen tail) stay bit-exact, as the entropy
    tables need; counters (BatchNorm's num_batches_tracked) are the latest member's.
    """
    if soup is None:
        return {part: {k: v.detach().clone() for k, v in state.items()} for part, state in member.items()}
    out: dict[str, Any] = {}
    for part, state in member.items():
        out[part] = {}
        for key, value in state.items():
            mean = soup[part][key]
            out[part][key] = mean + (value - mean) / count if value.is_floating_point() else value.detach().clone()
    return out


def initial_betas(cfg: Stage1Section, widths: int) -> list[float]:
    return list(cfg.beta) if len(cfg.beta) == widths else list(cfg.beta) * widths


def stage1_optimizers(student: EntropicStudent, cfg: Stage1Section, steps: int):
    main = [p for name, p in student.named_parameters() if not name.endswith("quantiles")]
    aux = [p for name, p in student.named_parameters() if name.endswith("quantiles")]
    opt = torch.optim.Adam(main, lr=cfg.lr)
    aux_opt = torch.optim.Adam(aux, lr=cfg.aux_lr)
    sched = one_cycle(opt, cfg.lr, steps, 0.1)
    return opt, aux_opt, sched


def kd_loss(logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, t: float) -> torch.Tensor:
    """0.5 * CE (where labels are known) + 0.5 * KL(teacher || student) at temperature t."""
    kl = F.kl_div(
        F.log_softmax(logits / t, 1), F.log_softmax(teacher_logits / t, 1), log_target=True, reduction="batchmean"
    ) * (t * t)
    known = labels >= 0
    if not bool(known.any()):
        return kl
    return 0.5 * F.cross_entropy(logits[known], labels[known]) + 0.5 * kl


def stage2_epoch(
    student: EntropicStudent,
    tables: list[EntropyTables],
    tail: nn.Module,
    teacher: Teacher,
    data: TrainData,
    cfg: Stage2Section,
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler,
    gen: torch.Generator,
    rng: random.Random,
    device: torch.device,
    desc: str,
    extra_widths: int,
    progress: bool = True,
    betas: list[float] | None = None,
    target_bits: list[float] | None = None,
    beta_lr: float = 0.01,
    views: CachedTargets | FreshTargets | None = None,
    world: World | None = None,
    average: WeightAverage | None = None,
) -> dict[str, float]:
    """One epoch of stage 2 on the codec's exact quantization (the tables are already fixed).

    With ``cfg.train_encoder`` the encoder keeps learning too, for the task, while the
    frozen priors charge its rate: they are the very distributions the tables were made
    from, so the tables stay right for what the encoder sends (``betas`` keep each width
    at its stage-1 bit target). The task loss (``kd``) and the rate are reported apart:
    their sum rises whenever rate control raises beta, which says nothing about the task.
    """
    world = world or World()
    student.encoder.train(cfg.train_encoder)
    student.decoder.train()
    tail.eval()  # BN statistics stay the teacher's; only weights adapt
    n = student.cfg.widths
    source = views if views is not None else sharded(data.train, world)
    bar = tqdm(total=len(source), desc=desc, unit="img", leave=False, disable=not progress)
    sums = {"loss": 0.0, "kd": 0.0, "bits": 0.0}
    correct, seen = 0, 0
    for batch in source.batches(cfg.batch_size, gen):
        if views is not None:  # the prefix's output and the teacher's logits, made once per view
            xp, _, t_logits = batch
            y = torch.full((len(xp),), -1, dtype=torch.int64, device=device)
        else:
            x, y = batch[0].to(device), batch[1].to(device)
            _, t_logits, _ = teacher.targets(x)
            xp = teacher.pre(x)
        loss = torch.zeros((), device=device)
        for w in sandwich(n, extra_widths, rng):
            with torch.set_grad_enabled(cfg.train_encoder):
                latent = student.encoder(xp, w, prefixed=views is not None)
                y_hat = latent + (tables[w].dequantize(latent) - latent).detach()  # straight-through
            logits = tail(student.decoder(y_hat, w))
            task = kd_loss(logits, t_logits, y, cfg.temperature)
            loss = loss + task
            if cfg.train_encoder and betas is not None:
                bits = rate_bits(symbol_likelihoods(student.priors[w], y_hat)).mean()
                loss = loss + betas[w] * bits
                if target_bits:
                    adapt_beta(betas, w, world.mean(bits.item()), target_bits[w], beta_lr)
            if w == n - 1:
                sums["kd"] += task.item() * len(xp)
                if cfg.train_encoder and betas is not None:
                    sums["bits"] += bits.item() * len(xp)
                ref = y if bool((y >= 0).all()) else t_logits.argmax(1)
                correct += int((logits.argmax(1) == ref).sum())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        world.average_gradients([p for g in opt.param_groups for p in g["params"]])
        opt.step()
        sched.step()
        if average is not None:
            average.update()
        sums["loss"] += loss.item() * len(xp)
        seen += len(xp)
        bar.update(len(xp))
        bar.set_postfix(kd=f"{sums['kd'] / seen:.4f}", acc=f"{correct / seen:.3f}")
    bar.close()
    world.average_buffers(student)
    world.average_buffers(tail)
    if average is not None:
        world.average_buffers(average.average)
    stats = {k: v / max(seen, 1) for k, v in sums.items()}
    stats["train_acc"] = correct / max(seen, 1)
    return stats
