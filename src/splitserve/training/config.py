"""Training configuration: one TOML file describes how a bundle is made.

    [model]    name, version, description, the precision the weights are stored in
    [data]     dataset ("fashion-mnist", "imagefolder", "labelled", "photos", or "sample": a sample
               shipped in the package, named by root, for smoke runs), root, input normalization
    [teacher]  family, args, weights (empty: train it here), split layer, distilled layers
    [student]  encoder stages, bottleneck channels, width fractions, decoder size
    [stage1]   head distillation: epochs, lr, beta (rate weight), batch size
    [stage2]   tail fine-tuning with KD: epochs, lr (cosine, in cycles), whether the tail trains too,
               weight averaging (ema over steps, members: a soup of several runs)
    [transform] widths above the student's that code the teacher's own features (models.transform)
    [eval]     how many test images the manifest's numbers are measured on

Unknown keys are errors: a typo must not silently train the wrong model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from splitserve.models.manifest import WEIGHT_PRECISIONS
from splitserve.tomlconfig import fill, read_toml


class ConfigError(ValueError):
    """The training config is invalid; the message names the key."""


@dataclass
class ModelSection:
    name: str = "my-split"
    version: str = "1"
    description: str = ""
    sample: str = ""  # the shipped sample (splitserve/data/samples/<name>.npz) demos run on
    # the precision head.pt and tail.pt are stored in: "float16" halves what a device installs
    # and downloads (the networks still compute in float32, with the rounded weights)
    weights: str = "float32"


@dataclass
class DataSection:
    dataset: str = "fashion-mnist"
    root: str = ""
    input_shape: list[int] = field(default_factory=lambda: [1, 28, 28])
    mean: list[float] = field(default_factory=lambda: [0.2860])
    std: list[float] = field(default_factory=lambda: [0.3530])
    labels: list[str] = field(default_factory=list)
    # Use only this many training / test images (0: all); for smoke runs.
    train_limit: int = 0
    test_limit: int = 0
    # photos dataset: crops per photo per epoch and held-out photos
    crops_per_epoch: int = 2048
    holdout: list[str] = field(default_factory=list)
    workers: int = 0
    # labelled dataset (a folder with labels.tsv): images whose class index is a multiple of
    # holdout_modulo are never trained on and are the test set
    holdout_modulo: int = 10
    # labelled dataset, function matching: images kept in memory at this short side, random
    # resized crops of at least crop_scale_min of the area, colour jitter, mixup of this fraction
    short_side: int = 320
    crop_scale_min: float = 0.25
    jitter: float = 0.3
    mixup: float = 0.5
    # labelled dataset: folders of unlabelled photos (any tree of image files) whose views join the
    # training images' (function matching needs no labels); at most extra_limit of them (0: all)
    extra_images: list[str] = field(default_factory=list)
    extra_limit: int = 0
    # > 0: views are drawn as if each extra_images folder held at most this many images, so one
    # large folder of few classes (Imagenette: 13,361 photos of 10) does not crowd out the others;
    # every image still appears. 0: every image is drawn alike
    extra_cap: int = 0


@dataclass
class TeacherSection:
    family: str = "fmnist-cnn"
    args: dict[str, Any] = field(default_factory=dict)
    # "" : train from scratch here; "package:<name>" or a file path: pretrained weights
    weights: str = ""
    split: str = "block2"
    # tail layers whose outputs are distilled too (besides the split itself)
    distill: list[str] = field(default_factory=list)
    epochs: int = 8
    lr: float = 2e-3
    batch_size: int = 128


@dataclass
class StudentSection:
    stages: list[list[int]] = field(default_factory=lambda: [[32, 5, 2], [48, 5, 2]])
    bottleneck: int = 24
    fractions: list[float] = field(default_factory=lambda: [1.0])
    decoder_hidden: int = 64
    # start the encoder with the teacher's own (frozen) layers up to this one
    prefix: str = ""


@dataclass
class Stage1Section:
    epochs: int = 10
    lr: float = 2e-3
    aux_lr: float = 1e-3
    # rate weight, per bit per frame; one value or one per width (narrowest first)
    beta: list[float] = field(default_factory=lambda: [0.005])
    batch_size: int = 128
    # sandwich rule: widest + narrowest + this many random widths per step
    random_widths: int = 1
    # divide each distilled layer's MSE by the teacher's variance there, so layers of
    # different scale weigh alike and beta means the same across models
    normalize: bool = False
    # rate control: bits per frame to aim at, per width (narrowest first). beta then
    # starts from the value above and adapts every step until each width meets its target.
    target_bits: list[float] = field(default_factory=list)
    beta_lr: float = 0.01  # per step; each step moves beta by at most 1 %
    # weight of a KL term between the teacher's and the student's logits (through the frozen
    # tail): tells the encoder which information matters for the task, not just for MSE
    kd_weight: float = 0.0
    # how training charges the rate: "ste" (the pmf of the rounded symbols, what the
    # codec pays) or "noise" (compressai's additive-uniform-noise proxy)
    rate_proxy: str = "ste"
    # with a student prefix and no distilled tail layers: precompute this many frames'
    # prefix outputs, teacher features and logits once; both stages train every epoch on
    # them (0: fresh frames each step)
    cache: int = 0


@dataclass
class Stage2Section:
    epochs: int = 4
    lr: float = 1e-3
    finetune_tail: bool = True
    # the fine-tuned tail's learning rate (0: lr); a pretrained tail wants a gentler one than
    # the decoder it learns to read from
    tail_lr: float = 0.0
    # keep training the encoder for the task too, its rate charged by the frozen priors
    # (whose tables are already fixed) at the stage-1 betas
    train_encoder: bool = False
    temperature: float = 1.0
    batch_size: int = 128
    # the learning rate follows a cosine over epochs / cycles epochs, then restarts at lr
    # (SGDR): each cycle ends annealed, so a later cycle continues from a finished model
    cycles: int = 1
    # > 0: the bundle gets an exponential moving average of stage 2's weights, updated every
    # step with this decay (0.998 averages over the last ~500 steps); 0: the last step's weights
    ema: float = 0.0
    # > 1: stage 2 runs this many times from stage 1's weights, each with its own random
    # streams, and the bundle gets the average of their weights (a model soup); costs
    # members x stage 2's time
    members: int = 1


@dataclass
class TransformSection:
    # one transform width per step (models.transform), above the student's widths, finest
    # last: the teacher's split features on their principal components, in units of the step
    steps: list[float] = field(default_factory=list)
    # training views the basis and the widths' coding tables are fitted on
    frames: int = 2048
    # "name:version" of a packaged bundle: keep its student as it is (no teacher or student
    # training) and only add the transform widths; empty: train the student, then add them
    base: str = ""


@dataclass
class EvalSection:
    limit: int = 0  # 0: the whole test set
    batch_size: int = 256


@dataclass
class TrainConfig:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    teacher: TeacherSection = field(default_factory=TeacherSection)
    student: StudentSection = field(default_factory=StudentSection)
    stage1: Stage1Section = field(default_factory=Stage1Section)
    stage2: Stage2Section = field(default_factory=Stage2Section)
    transform: TransformSection = field(default_factory=TransformSection)
    eval: EvalSection = field(default_factory=EvalSection)
    seed: int = 0
    device: str = "auto"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_config(data: dict[str, Any]) -> TrainConfig:
    unknown = sorted(set(data) - {f.name for f in fields(TrainConfig)})
    if unknown:
        raise ConfigError(f"unknown config keys {unknown}; known: {sorted(f.name for f in fields(TrainConfig))}")
    cfg = fill(TrainConfig(), data, "config", ConfigError)
    validate(cfg)
    return cfg


def load_config(path: str | Path) -> TrainConfig:
    data = read_toml(path, ConfigError)
    try:
        return parse_config(data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def validate(cfg: TrainConfig) -> None:
    d, s = cfg.data, cfg.student
    if cfg.model.weights not in WEIGHT_PRECISIONS:
        raise ConfigError(f"[model] weights must be one of {WEIGHT_PRECISIONS}, got {cfg.model.weights!r}")
    if len(d.input_shape) != 3 or any(v <= 0 for v in d.input_shape):
        raise ConfigError(f"[data] input_shape must be [C, H, W], got {d.input_shape}")
    if len(d.mean) != d.input_shape[0] or len(d.std) != d.input_shape[0]:
        raise ConfigError("[data] mean and std need one value per input channel")
    if not s.fractions or sorted(s.fractions) != s.fractions or not all(0 < f <= 1 for f in s.fractions):
        raise ConfigError(f"[student] fractions must increase within (0, 1], got {s.fractions}")
    if not s.stages or any(len(st) != 3 for st in s.stages):
        raise ConfigError("[student] stages must be a list of [channels, kernel, stride]")
    if len(cfg.stage1.beta) not in (1, len(s.fractions)):
        raise ConfigError("[stage1] beta needs one value, or one per width")
    if cfg.stage1.rate_proxy not in ("ste", "noise"):
        raise ConfigError(f"[stage1] rate_proxy must be 'ste' or 'noise', got {cfg.stage1.rate_proxy!r}")
    if cfg.stage1.cache and (not s.prefix or cfg.teacher.distill):
        raise ConfigError("[stage1] cache needs [student] prefix and an empty [teacher] distill list")
    if cfg.stage1.target_bits and (
        len(cfg.stage1.target_bits) != len(s.fractions) or any(t <= 0 for t in cfg.stage1.target_bits)
    ):
        raise ConfigError("[stage1] target_bits needs one positive value per width")
    if d.extra_images and d.dataset != "labelled":
        raise ConfigError('[data] extra_images needs dataset = "labelled"')
    if d.extra_limit < 0:
        raise ConfigError(f"[data] extra_limit must be >= 0, got {d.extra_limit}")
    if d.extra_cap < 0:
        raise ConfigError(f"[data] extra_cap must be >= 0 (0: no cap), got {d.extra_cap}")
    if cfg.stage2.cycles < 1 or cfg.stage2.epochs % cfg.stage2.cycles:
        raise ConfigError(
            f"[stage2] cycles must be >= 1 and divide epochs ({cfg.stage2.epochs}), got {cfg.stage2.cycles}"
        )
    if cfg.stage2.tail_lr < 0 or (cfg.stage2.tail_lr and not cfg.stage2.finetune_tail):
        raise ConfigError("[stage2] tail_lr must be >= 0, and only set with finetune_tail = true")
    if cfg.stage2.members < 1:
        raise ConfigError(f"[stage2] members must be >= 1 (1: one run of stage 2), got {cfg.stage2.members}")
    t = cfg.transform
    if any(not v > 0 for v in t.steps) or sorted(t.steps, reverse=True) != t.steps:
        raise ConfigError(f"[transform] steps must be positive and decrease (finest last), got {t.steps}")
    if t.steps and not s.prefix:
        raise ConfigError("[transform] steps need [student] prefix = the teacher's split layer")
    if t.frames < 1 or (t.base and (":" not in t.base or not t.steps)):
        raise ConfigError(f"[transform] needs frames >= 1, and base as 'name:version' with steps; got {t}")
    if not 0 <= cfg.stage2.ema < 1:
        raise ConfigError(f"[stage2] ema must be in [0, 1) (0: no averaging), got {cfg.stage2.ema}")
