"""The whole recipe: teacher -> stage 1 -> stage 2 -> bundle with measured numbers.

Each epoch ends with a checkpoint (``<work>/checkpoint.pt``), so ``--resume``
continues an interrupted run where it stopped, with the same random streams.
"""

from __future__ import annotations

import copy
import datetime as _dt
import json
import logging
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from splitserve import __version__
from splitserve.codecs import CODEC_IDS
from splitserve.models import zoo
from splitserve.models.backbones import (
    build_teacher,
    feature_shape,
    load_state_dict,
    resolve_weights,
    split_model,
    tap_outputs,
)
from splitserve.models.bottleneck import EntropicStudent, StudentConfig
from splitserve.models.bundle import TAIL_FILE, TEACHER_FILE, Bundle, InputSpec, Preprocess, write_bundle
from splitserve.models.manifest import file_sha256
from splitserve.training import distill
from splitserve.training import teacher as teacher_training
from splitserve.training.config import ConfigError, Stage2Section, TrainConfig, parse_config
from splitserve.training.data import TrainData, build_data
from splitserve.training.evaluate import evaluate_bundle
from splitserve.training.parallel import World, sharded, steps_per_epoch
from splitserve.training.transform import add_transform_widths, fitting_frames

log = logging.getLogger("splitserve.train")
PHASES = ("teacher", "stage1", "stage2", "done")


class Run:
    """One training run: its state, and the checkpoint it lives in."""

    def __init__(self, cfg: TrainConfig, work: Path, resume: bool, progress: bool = True,
                 world: World | None = None) -> None:  # fmt: skip
        self.cfg = cfg
        self.world = world or World()
        self.progress = progress and self.world.main  # one progress bar, not one per rank
        self.work = work
        self.ckpt = work / "checkpoint.pt"
        self.device = self.world.device(cfg.device)
        self.state: dict[str, Any] = {"phase": "teacher", "epoch": 0, "history": []}
        work.mkdir(parents=True, exist_ok=True)
        if resume:
            if not self.ckpt.is_file():
                raise FileNotFoundError(f"--resume: no checkpoint at {self.ckpt}")
            self.state = torch.load(self.ckpt, map_location="cpu", weights_only=False)
            if self.state.get("config") != cfg.to_dict():
                self._train_on(cfg)
            log.info("resuming at %s epoch %d", self.state["phase"], self.state["epoch"])
        self.state["config"] = cfg.to_dict()

    def _train_on(self, cfg: TrainConfig) -> None:
        """Accept a config that only adds stage-2 cycles (and names a new version) to the checkpoint's.

        Each cycle ends annealed and the next restarts at the full lr, so a finished run goes on
        with the cycles added as a run planned with them from the start would. Where the data
        lives (``data.root``), the device and the precision the bundle stores its weights in
        (``model.weights``) may differ too: they do not change what is trained.
        """
        old, new = _with_defaults(self.state.get("config") or {}), cfg.to_dict()
        old_s2, new_s2 = dict(old.get("stage2", {})), dict(new["stage2"])
        old_version = old.get("model", {}).get("version")
        cycle = old_s2.get("epochs", 0) // max(old_s2.get("cycles", 1), 1)
        for d in (old, new):
            d.pop("device", None)
            d.get("data", {}).pop("root", None)
            d.get("model", {}).pop("version", None)
            d.get("model", {}).pop("weights", None)
            d.get("stage2", {}).pop("epochs", None)
            d.get("stage2", {}).pop("cycles", None)
        differ = _differences(old, new)
        if differ or new_s2["epochs"] // new_s2["cycles"] != cycle or new_s2["cycles"] < old_s2.get("cycles", 1):
            raise ConfigError(
                f"--resume: {self.ckpt} was made with a different config ({', '.join(differ) or '[stage2] cycles'}); "
                f"start a new --work dir. A resume may only add [stage2] cycles of the same length ({cycle} epochs), "
                "with a new [model] version"
            )
        if new_s2["epochs"] == old_s2["epochs"]:
            return
        if new_s2["members"] > 1:
            raise ConfigError(
                f"--resume: {self.ckpt} is a soup of {new_s2['members']} stage-2 runs ([stage2] members), and the "
                "checkpoint keeps only the last one's weights: train more cycles in a new --work dir"
            )
        if cfg.model.version == old_version:
            raise ConfigError(
                f"--resume: training on writes a new bundle; give [model] version a new value (the checkpoint's "
                f"run wrote version {old_version!r})"
            )
        log.info("training on: stage 2 from %d to %d epochs", old_s2["epochs"], new_s2["epochs"])
        if self.state["phase"] == "done":
            # a cycle boundary: the next cycle starts afresh, planned for this run's steps per epoch
            self.state["phase"], self.state["epoch"] = "stage2", old_s2["epochs"]
            self.state.pop("sched", None)

    def save(self, **parts: Any) -> None:
        self.state.update(parts)
        if not self.world.main:  # every rank holds the same state; one writes it
            return
        tmp = self.ckpt.with_suffix(".tmp")
        torch.save(self.state, tmp)
        tmp.replace(self.ckpt)

    def seed_streams(self, phase: str, member: int = 0) -> tuple[torch.Generator, random.Random]:
        """Generators for a phase (and stage-2 member): fresh from the seed, or restored from the checkpoint."""
        seed = self.cfg.seed + PHASES.index(phase) + 1000 * member
        gen = torch.Generator().manual_seed(seed)
        rng = random.Random(seed)
        # only mid-phase: the checkpoint at a phase's end still holds the previous phase's streams
        if self.state["phase"] == phase and self.state["epoch"] and "gen" in self.state:
            gen.set_state(self.state["gen"])
            rng.setstate(self.state["rng"])
            torch.set_rng_state(self.state["torch_rng"])
        return gen, rng

    def streams_state(self, gen: torch.Generator, rng: random.Random) -> dict[str, Any]:
        return {"gen": gen.get_state(), "rng": rng.getstate(), "torch_rng": torch.get_rng_state()}


def _with_defaults(saved: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's config with the keys added since it was made at their defaults.

    Defaults keep what older runs did, so an old checkpoint resumes under today's config.
    A config that no longer parses (a key removed since) is compared as it was saved.
    """
    try:
        return parse_config(copy.deepcopy(saved)).to_dict()
    except ConfigError:
        return copy.deepcopy(saved)


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """The config keys ("[section] key", or a top-level key) whose values differ."""
    keys = []
    for section in sorted(set(old) | set(new)):
        a, b = old.get(section), new.get(section)
        if isinstance(a, dict) and isinstance(b, dict):
            keys += [f"[{section}] {k}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        elif a != b:
            keys.append(section)
    return keys


def _input_spec(cfg: TrainConfig) -> InputSpec:
    d = cfg.data
    return InputSpec(tuple(d.input_shape), tuple(d.mean), tuple(d.std))  # type: ignore[arg-type]


def _student_config(cfg: TrainConfig, feats: tuple[int, ...], prefix_channels: int | None) -> StudentConfig:
    s = cfg.student
    return StudentConfig(
        in_channels=prefix_channels or cfg.data.input_shape[0],
        stages=[tuple(st) for st in s.stages],  # type: ignore[misc]
        bottleneck=s.bottleneck,
        feature_channels=feats[0],
        fractions=list(s.fractions),
        decoder_hidden=s.decoder_hidden,
        prefix=s.prefix,
    )


def _phase_done(run: Run, phase: str) -> bool:
    return PHASES.index(run.state["phase"]) > PHASES.index(phase)


def train_teacher(run: Run, data: TrainData, pre: nn.Module) -> nn.Module:
    cfg = run.cfg
    model = build_teacher(cfg.teacher.family, cfg.teacher.args).to(run.device)
    if cfg.teacher.weights:
        model.load_state_dict(load_state_dict(resolve_weights(cfg.teacher.weights)))
        return model.eval()
    if _phase_done(run, "teacher"):
        model.load_state_dict(run.state["teacher"])
        return model.eval()
    run.world.broadcast(model)  # trained here: every rank starts from the same weights
    steps = steps_per_epoch(sharded(data.train, run.world), cfg.teacher.batch_size) * cfg.teacher.epochs
    opt, sched = teacher_training.make_optimizer(model, cfg.teacher, steps)
    gen, _ = run.seed_streams("teacher")
    rng = random.Random(0)
    if run.state["phase"] == "teacher" and run.state["epoch"]:
        model.load_state_dict(run.state["teacher"])
        opt.load_state_dict(run.state["opt"])
        sched.load_state_dict(run.state["sched"])
    for epoch in range(run.state["epoch"], cfg.teacher.epochs):
        loss = teacher_training.train_epoch(
            model,
            pre,
            data,
            cfg.teacher,
            opt,
            sched,
            gen,
            run.device,
            f"teacher {epoch + 1}/{cfg.teacher.epochs}",
            run.progress,
            run.world,
        )
        acc = teacher_training.accuracy(model, pre, data, run.device) if data.has_labels else None
        log.info("teacher epoch %d: loss %.4f, test accuracy %s", epoch + 1, loss, acc)
        run.state["history"].append({"phase": "teacher", "epoch": epoch + 1, "loss": loss, "accuracy": acc})
        last = epoch + 1 == cfg.teacher.epochs
        run.save(
            phase="stage1" if last else "teacher",
            epoch=0 if last else epoch + 1,
            teacher=model.state_dict(),
            opt=opt.state_dict(),
            sched=sched.state_dict(),
            **run.streams_state(gen, rng),
        )
    return model.eval()


def train_student(run: Run, data: TrainData, pre: nn.Module, teacher_model: nn.Module, feats: tuple[int, ...]):
    cfg = run.cfg
    for p in teacher_model.parameters():
        p.requires_grad_(False)
    head, tail = split_model(teacher_model, cfg.teacher.split)
    teacher = distill.Teacher(pre, head, tap_outputs(tail, cfg.teacher.distill))
    prefix = None
    if cfg.student.prefix:
        prefix = split_model(copy.deepcopy(teacher_model), cfg.student.prefix)[0]
        prefix_channels = feature_shape(copy.deepcopy(prefix).cpu(), tuple(cfg.data.input_shape))[0]
    student_cfg = _student_config(cfg, feats, prefix_channels if prefix is not None else None)
    student = EntropicStudent(student_cfg, prefix).to(run.device)
    run.world.broadcast(student)
    with torch.no_grad():
        probe = pre(torch.from_numpy(data.test_images[:2]).to(run.device))
        got = student.decoder(student.encoder(probe, student.cfg.widths - 1), student.cfg.widths - 1).shape[1:]
    if tuple(got) != feats:
        raise ConfigError(
            f"[student] decodes to {tuple(got)} but the teacher's features at {cfg.teacher.split!r} are {feats}; "
            "make the product of the encoder strides match the teacher's downsampling at the split"
        )

    views: distill.CachedTargets | distill.FreshTargets | None = None
    if cfg.student.prefix and not cfg.teacher.distill and not _phase_done(run, "stage2"):
        # the frozen prefix and the teacher run once per view, not once per width trained on it
        share = cfg.student.prefix == cfg.teacher.split
        frames = sharded(data.train, run.world)
        if cfg.stage1.cache:
            # a fixed set of views for both stages, rebuilt identically on resume from its own seed
            views = distill.CachedTargets(
                student, teacher, frames, cfg.stage1.cache // run.world.size, cfg.stage1.batch_size,
                torch.Generator().manual_seed(cfg.seed + 100), run.device, run.progress, share=share,
            )  # fmt: skip
        else:
            views = distill.FreshTargets(student, teacher, frames, run.device, share=share)
    source = views if views is not None else sharded(data.train, run.world)

    # Stage 1
    if not _phase_done(run, "stage1"):
        s1 = cfg.stage1
        steps = steps_per_epoch(source, s1.batch_size) * s1.epochs
        opt, aux_opt, sched = distill.stage1_optimizers(student, s1, steps)
        gen, rng = run.seed_streams("stage1")
        betas = distill.initial_betas(s1, student.cfg.widths)
        if run.state["phase"] == "stage1" and run.state["epoch"]:
            student.load_state_dict(run.state["student"])
            opt.load_state_dict(run.state["opt"])
            aux_opt.load_state_dict(run.state["aux_opt"])
            sched.load_state_dict(run.state["sched"])
            betas = list(run.state["betas"])
        for epoch in range(run.state["epoch"], s1.epochs):
            started = time.monotonic()
            stats = distill.stage1_epoch(
                student, teacher, data, s1, opt, aux_opt, sched, gen, rng, run.device,
                f"stage 1 {epoch + 1}/{s1.epochs}", betas, run.progress, views, run.world,
            )  # fmt: skip
            stats["seconds"] = round(time.monotonic() - started, 2)
            log.info("stage 1 epoch %d: %s", epoch + 1, stats)
            run.state["history"].append({"phase": "stage1", "epoch": epoch + 1, **stats})
            last = epoch + 1 == s1.epochs
            run.save(
                phase="stage2" if last else "stage1",
                epoch=0 if last else epoch + 1,
                student=student.state_dict(),
                opt=opt.state_dict(),
                aux_opt=aux_opt.state_dict(),
                sched=sched.state_dict(),
                betas=betas,
                **run.streams_state(gen, rng),
            )
    else:
        student.load_state_dict(run.state["student"])

    # Stage 2: the priors become integer tables once, here, and never change again.
    student.eval()
    tables = student.entropy_tables()
    s2 = cfg.stage2
    ft_tail = tail
    if s2.finetune_tail:
        _, ft_tail = split_model(copy.deepcopy(teacher_model), cfg.teacher.split)
        for p in ft_tail.parameters():
            p.requires_grad_(True)
    betas = list(run.state.get("betas") or distill.initial_betas(cfg.stage1, student.cfg.widths))
    for p in student.priors.parameters():
        p.requires_grad_(False)  # the tables are fixed now: the priors must stay what they were
    average = None
    if not _phase_done(run, "stage2"):
        for p in student.encoder.parameters():
            p.requires_grad_(s2.train_encoder)
        if student.encoder.prefix is not None:
            student.encoder.prefix.requires_grad_(False)
        if s2.members > 1 and "stage2_start" not in run.state:
            # every member starts where stage 1 ended, with stage 1's betas
            run.state["stage2_start"] = {
                "student": copy.deepcopy(student.state_dict()),
                "tail": copy.deepcopy(ft_tail.state_dict()),
                "betas": list(betas),
            }
        first = run.state.get("member", 0)
        for member in range(first, s2.members):
            resumed = member == first and run.state["phase"] == "stage2" and run.state["epoch"] > 0
            if member > 0 and not resumed:
                start = run.state["stage2_start"]
                student.load_state_dict(start["student"])
                ft_tail.load_state_dict(start["tail"])
                betas = list(start["betas"])
            average = distill.WeightAverage(student, ft_tail, s2.ema) if s2.ema else None
            opt, sched = _stage2_optimizer(student, ft_tail, s2, steps_per_epoch(source, s2.batch_size))
            gen, rng = run.seed_streams("stage2", member)
            if resumed:
                student.load_state_dict(run.state["student"])
                ft_tail.load_state_dict(run.state["tail"])
                if average is not None:
                    average.load_state_dict(run.state["average"])
                opt.load_state_dict(run.state["opt"])
                if "sched" in run.state:
                    sched.load_state_dict(run.state["sched"])
                else:  # trained on from a finished run: a new cycle starts at the full lr
                    for group in opt.param_groups:
                        group["lr"] = group["initial_lr"]
                tables = student.entropy_tables()
            of = f" member {member + 1}/{s2.members}" if s2.members > 1 else ""
            for epoch in range(run.state["epoch"] if resumed else 0, s2.epochs):
                started = time.monotonic()
                stats = distill.stage2_epoch(
                    student, tables, ft_tail, teacher, data, s2, opt, sched, gen, rng, run.device,
                    f"stage 2{of} {epoch + 1}/{s2.epochs}", cfg.stage1.random_widths, run.progress,
                    betas, cfg.stage1.target_bits, cfg.stage1.beta_lr, views, run.world, average,
                )  # fmt: skip
                stats["seconds"] = round(time.monotonic() - started, 2)
                log.info("stage 2%s epoch %d: %s", of, epoch + 1, {k: round(v, 4) for k, v in stats.items()})
                run.state["history"].append(
                    {"phase": "stage2", "epoch": epoch + 1, **({"member": member + 1} if of else {}), **stats}
                )
                last = epoch + 1 == s2.epochs
                if last and s2.members > 1:
                    shipped = _shipped(student, ft_tail, average)
                    run.state["soup"] = distill.add_to_soup(run.state.get("soup"), shipped, member + 1)
                finished = last and member + 1 == s2.members
                run.save(
                    phase="done" if finished else "stage2",
                    epoch=0 if last else epoch + 1,
                    member=member + 1 if last and not finished else member,
                    student=student.state_dict(),
                    tail=ft_tail.state_dict(),
                    opt=opt.state_dict(),
                    sched=sched.state_dict(),
                    betas=betas,
                    **({"average": average.state_dict()} if average is not None else {}),
                    **run.streams_state(gen, rng),
                )
    else:
        student.load_state_dict(run.state["student"])
        ft_tail.load_state_dict(run.state["tail"])
        tables = student.entropy_tables()
        if s2.ema and s2.members == 1:  # a soup ships its own average, made at each member's end
            average = distill.WeightAverage(student, ft_tail, s2.ema)
            average.load_state_dict(run.state["average"])
    # The checkpoint keeps the last step's weights (a resume with more cycles trains on from
    # them); the bundle gets the average of the members' weights, or of the last steps'. The
    # tables come from the frozen priors, which averaging leaves exactly as they were.
    shipped = run.state["soup"] if s2.members > 1 else _shipped(student, ft_tail, average)
    student.load_state_dict(shipped["student"])
    ft_tail.load_state_dict(shipped["tail"])
    return student.eval(), tables, ft_tail.eval()


def _stage2_optimizer(student: EntropicStudent, tail: nn.Module, s2: Stage2Section, steps_per_epoch: int):
    params = list(student.decoder.parameters())
    if s2.train_encoder:
        params += [p for p in student.encoder.parameters() if p.requires_grad]
    groups: list[dict[str, Any]] = [{"params": params}]
    if s2.finetune_tail:
        groups.append({"params": list(tail.parameters()), "lr": s2.tail_lr or s2.lr})
    opt = torch.optim.Adam(groups, lr=s2.lr)
    return opt, stage2_schedule(opt, steps_per_epoch * (s2.epochs // s2.cycles))


def _shipped(student: EntropicStudent, tail: nn.Module, average: distill.WeightAverage | None) -> dict[str, Any]:
    """The weights one run of stage 2 ends with: the weight average's, or the last step's."""
    if average is not None:
        averaged_student, averaged_tail = average.weights()
        return {"student": averaged_student, "tail": averaged_tail}
    return {"student": student.state_dict(), "tail": tail.state_dict()}


def stage2_schedule(opt: torch.optim.Optimizer, cycle_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    """Cosine to zero over each cycle of ``cycle_steps`` optimizer steps, restarting at the full lr."""
    return torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=max(cycle_steps, 1))


def _latent_shapes(student: EntropicStudent, spec: InputSpec, device: torch.device) -> list[list[int]]:
    with torch.no_grad():
        x = torch.zeros(1, *spec.shape, device=device)
        return [list(student.encoder(x, w).shape[1:]) for w in range(student.cfg.widths)]


def train(cfg: TrainConfig, out_root: Path, work: Path, resume: bool = False, progress: bool = True) -> Bundle | None:
    """Train and write ``<out_root>/<name>/<version>/``; returns the evaluated bundle.

    Under torchrun every rank trains its share (see ``parallel``); rank 0 writes the
    bundle and returns it, the other ranks return None.
    """
    world = World()
    try:
        return _train(cfg, out_root, work, resume, progress, world)
    finally:
        world.close()


def _train(cfg: TrainConfig, out_root: Path, work: Path, resume: bool, progress: bool, world: World) -> Bundle | None:
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    run = Run(cfg, work, resume, progress, world)
    if run.device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: pick each convolution's fastest kernel once
        torch.backends.cuda.matmul.allow_tf32 = True
    data = build_data(cfg.data, cfg.seed, str(run.device), run.progress)
    if cfg.transform.base:  # the base bundle's student as it is: only the transform widths are new
        name, _, version = cfg.transform.base.partition(":")
        base = Bundle.load(zoo.find_bundle(name, version))
        if not world.main:
            return None
        return _with_transform(cfg, base, data, out_root, progress)
    spec = _input_spec(cfg)
    pre = Preprocess(spec).to(run.device)
    teacher_model = train_teacher(run, data, pre)
    world.check_in_sync(teacher_model, "teacher")
    head, _ = split_model(teacher_model, cfg.teacher.split)
    feats = feature_shape(head.cpu(), spec.shape)
    teacher_model.to(run.device)
    student, tables, tail = train_student(run, data, pre, teacher_model, feats)
    world.check_in_sync(student, "student")
    if not world.main:
        return None

    # The bundle
    dest = out_root / cfg.model.name / cfg.model.version
    # the prefix is the teacher's own frozen layers: the bundle has the teacher's weights already
    # (teacher.pt, or the package whose sha256 the manifest records), so head.pt leaves them out
    head_state = {k: v for k, v in student.encoder.state_dict().items() if not k.startswith("prefix.")}
    states: dict[str, dict[str, torch.Tensor]] = {"head.pt": head_state}
    tail_state = {f"decoder.{k}": v for k, v in student.decoder.state_dict().items()}
    if cfg.stage2.finetune_tail:
        tail_state.update({f"tail.{k}": v for k, v in tail.state_dict().items()})
    states[TAIL_FILE] = tail_state
    teacher_weights = cfg.teacher.weights
    weights_sha = None
    if teacher_weights.startswith("package:"):
        weights_sha = file_sha256(resolve_weights(teacher_weights))
    else:
        states[TEACHER_FILE] = teacher_model.state_dict()
        teacher_weights = TEACHER_FILE
    shapes = _latent_shapes(student, spec, run.device)
    manifest = {
        "name": cfg.model.name,
        "version": cfg.model.version,
        "task": "classification",
        "description": cfg.model.description,
        "sample": cfg.model.sample,
        "created": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "splitserve": __version__,
        "input": {"shape": list(spec.shape), "mean": list(spec.mean), "std": list(spec.std)},
        "labels": data.labels,
        "teacher": {
            "family": cfg.teacher.family,
            "args": cfg.teacher.args,
            "weights": teacher_weights,
            "weights_sha256": weights_sha,
            "split": cfg.teacher.split,
            "feature_shape": list(feats),
            "accuracy": None,
        },
        "student": student.cfg.to_dict(),
        "tail": {"finetuned": cfg.stage2.finetune_tail},
        "widths": [
            {"index": w, "fraction": f, "channels": shapes[w][0], "latent_shape": shapes[w]}
            for w, f in enumerate(student.cfg.fractions)
        ],
        "codecs": list(CODEC_IDS),
        "training": {"config": cfg.to_dict(), "history": run.state["history"], "images": data.train_files},
    }
    bundle = write_bundle(dest, manifest, states, tables, weights=cfg.model.weights)
    if cfg.transform.steps:
        return _with_transform(cfg, bundle, data, out_root, progress)
    return _evaluated(cfg, bundle, data, progress)


def _with_transform(cfg: TrainConfig, bundle: Bundle, data: TrainData, out_root: Path, progress: bool) -> Bundle:
    """``[transform]``: the bundle with transform widths above its student's, written and evaluated."""
    training = bundle.manifest["training"]
    if cfg.transform.base:
        student = training
        while "base" in student:  # a refit of a refit: name the student's own training once, not nested
            student = student["base"]
        images = sorted(set(student.get("images") or []) | set(data.train_files))  # eval leaves them out
        training = {"config": cfg.to_dict(), "images": images, "base": student}
    frames = fitting_frames(data, cfg.transform.frames, cfg.seed)
    bundle = add_transform_widths(
        bundle, cfg.transform, frames, out_root / cfg.model.name / cfg.model.version, cfg.model.version,
        name=cfg.model.name, description=cfg.model.description or bundle.manifest["description"], training=training,
    )  # fmt: skip
    return _evaluated(cfg, bundle, data, progress)


def _evaluated(cfg: TrainConfig, bundle: Bundle, data: TrainData, progress: bool) -> Bundle:
    """The bundle measured on the test frames (``[eval] limit`` of them), the numbers in its manifest."""
    n = cfg.eval.limit or len(data.test_images)
    labels = data.test_labels[:n] if data.has_labels else None
    return record_evaluation(bundle, data.test_images[:n], labels, cfg.eval.batch_size, progress)


def record_evaluation(bundle: Bundle, images: np.ndarray, labels: np.ndarray | None, batch_size: int,
                      progress: bool = True) -> Bundle:  # fmt: skip
    """Measure every width on held-out frames and write the numbers into the bundle's manifest."""
    teacher_summary, results = evaluate_bundle(bundle, images, labels, batch_size, progress=progress)
    manifest = dict(bundle.manifest)
    manifest["teacher"] = {**manifest["teacher"], "accuracy": teacher_summary["accuracy"]}
    manifest["evaluation"] = {"frames": len(images), "teacher": teacher_summary}
    for r in results:
        manifest["widths"][r.width].update(
            bytes_mean=round(r.bytes_mean, 2),
            bytes_p95=round(r.bytes_p95, 2),
            accuracy=r.accuracy,
            agreement=r.agreement,
            head_ms=round(r.head_ms, 4),
        )
    (bundle.path / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return Bundle.load(bundle.path)
