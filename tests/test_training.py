"""Training smoke runs: small, on CPU, a couple of minutes at most."""

import copy
import json
import shutil
import subprocess
import tomllib

import numpy as np
import pytest
import torch
from conftest import BIN, ROOT

from splitserve.data.samples import load_sample
from splitserve.models.backbones import split_model
from splitserve.models.bundle import Bundle
from splitserve.models.zoo import BUNDLED, bundle_dirs
from splitserve.training.config import ConfigError, load_config, parse_config
from splitserve.training.recipe import Run, stage2_schedule, train
from splitserve.training.schedule import one_cycle

SMOKE = """
seed = 3
[model]
name = "smoke"
sample = "fmnist-test"
[data]
dataset = "sample"
root = "fmnist-test"
train_limit = 320
test_limit = 100
[teacher]
split = "block2"
distill = ["block3"]
epochs = 2
batch_size = 64
[student]
stages = [[16, 5, 2], [16, 5, 2]]
bottleneck = 8
fractions = [0.5, 1.0]
decoder_hidden = 16
[stage1]
epochs = 2
batch_size = 64
normalize = true
target_bits = [100, 200]
kd_weight = 1.0
[stage2]
epochs = 4
cycles = 2
batch_size = 64
[eval]
limit = 100
"""


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    (root / "smoke.toml").write_text(SMOKE)
    cfg = load_config(root / "smoke.toml")
    bundle = train(cfg, root / "models", root / "work", progress=False)
    return root, cfg, bundle


@pytest.mark.slow
def test_smoke_training_learns_and_writes_a_working_bundle(smoke):
    root, cfg, bundle = smoke
    history = bundle.manifest["training"]["history"]
    teacher = [h["loss"] for h in history if h["phase"] == "teacher"]
    stage1 = [h["mse"] for h in history if h["phase"] == "stage1"]
    assert teacher[-1] < teacher[0] and stage1[-1] < stage1[0]  # the losses fall
    loaded = Bundle.load(root / "models" / "smoke" / "1")
    assert loaded.sha256 == bundle.sha256 and len(loaded.widths) == 2
    images, _ = load_sample("fmnist-test")
    x = loaded.preprocess()(torch.from_numpy(images[:4]))
    for w in range(2):  # every width round-trips through real bytes
        y = loaded.device_stage("entropic", w)(x)
        enc, dec = loaded.encoder_for("entropic", w), loaded.decoder_for("entropic", w)
        for yi in y:
            back = dec.decode(enc.encode(yi), loaded.latent_shape(w))
            assert torch.equal(back, loaded.entropy_tables(w).dequantize(yi[None])[0])
        assert loaded.widths[w]["bytes_mean"] > 0 and 0 <= loaded.widths[w]["accuracy"] <= 1


@pytest.mark.slow
def test_training_is_deterministic_and_resumable(smoke, tmp_path):
    root, cfg, bundle = smoke
    again = train(cfg, tmp_path / "models", tmp_path / "work", progress=False)
    a = torch.load(bundle.path / "head.pt", weights_only=True)
    b = torch.load(again.path / "head.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # resuming a finished run rebuilds the same bundle from its checkpoint, without training
    resumed = train(cfg, tmp_path / "models2", root / "work", resume=True, progress=False)
    c = torch.load(resumed.path / "head.pt", weights_only=True)
    assert all(torch.equal(a[k], c[k]) for k in a)
    np.testing.assert_array_equal(
        np.load(bundle.path / "entropy.npz")["w1_freqs"], np.load(resumed.path / "entropy.npz")["w1_freqs"]
    )


@pytest.mark.slow
def test_a_resume_at_a_phase_boundary_trains_as_a_fresh_run(smoke, tmp_path):
    # a run stopped right after stage 1's last epoch, then resumed, makes the bundle an
    # uninterrupted run makes (stage 2 draws the same random streams either way)
    root, cfg, bundle = smoke
    stopped = load_config(root / "smoke.toml")
    stopped.stage2.epochs = 0  # stage 1 runs, its checkpoint ends at stage 2, epoch 0
    train(stopped, tmp_path / "m0", tmp_path / "work", progress=False)
    state = torch.load(tmp_path / "work" / "checkpoint.pt", weights_only=False)
    assert (state["phase"], state["epoch"]) == ("stage2", 0)
    state["config"] = cfg.to_dict()
    torch.save(state, tmp_path / "work" / "checkpoint.pt")
    resumed = train(cfg, tmp_path / "m1", tmp_path / "work", resume=True, progress=False)
    a = torch.load(bundle.path / "tail.pt", weights_only=True)
    b = torch.load(resumed.path / "tail.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
@pytest.mark.parametrize("ema", [0.0, 0.9])
def test_a_resume_within_a_stage2_cycle_trains_as_an_uninterrupted_run(smoke, tmp_path, monkeypatch, ema):
    # stopped mid-cycle: a resumed run must go on along the same cosine and restart it at the
    # same step, with the optimizer's, the random streams' and the weight average's state
    root, _, _ = smoke
    cfg = load_config(root / "smoke.toml")
    cfg.stage2.ema = ema
    save = Run.save

    def save_and_snapshot(self, **parts):
        save(self, **parts)
        if (parts.get("phase"), parts.get("epoch")) == ("stage2", 1):
            shutil.copy(self.ckpt, tmp_path / "mid-cycle-1.pt")

    monkeypatch.setattr(Run, "save", save_and_snapshot)
    bundle = train(cfg, tmp_path / "m0", tmp_path / "work0", progress=False)
    monkeypatch.undo()
    (tmp_path / "work1").mkdir()
    shutil.copy(tmp_path / "mid-cycle-1.pt", tmp_path / "work1" / "checkpoint.pt")
    resumed = train(cfg, tmp_path / "m1", tmp_path / "work1", resume=True, progress=False)
    a = torch.load(bundle.path / "tail.pt", weights_only=True)
    b = torch.load(resumed.path / "tail.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_the_bundle_gets_stage2s_weight_average(smoke, tmp_path):
    root, _, plain = smoke
    cfg = load_config(root / "smoke.toml")
    cfg.stage2.ema = 0.9
    bundle = train(cfg, tmp_path / "models", tmp_path / "work", progress=False)
    state = torch.load(tmp_path / "work" / "checkpoint.pt", weights_only=False)
    average = {k.removeprefix("module."): v for k, v in state["average"].items()}
    assert int(average.pop("n_averaged")) == 4 * -(-320 // 64)  # once per stage-2 step: 4 epochs of 5 batches
    tail = torch.load(bundle.path / "tail.pt", weights_only=True)
    trained = {"decoder.": "student.decoder.", "tail.": "tail."}
    for key, value in tail.items():
        prefix = next(p for p in trained if key.startswith(p))
        source = trained[prefix] + key.removeprefix(prefix)
        assert torch.equal(value, average[source])
    raw = {k: v for k, v in state["student"].items() if k.startswith("decoder.")}
    assert any(not torch.equal(tail[k], raw[k]) for k in raw if raw[k].is_floating_point())  # not the last step's
    # stage 2 leaves the encoder and priors frozen here: averaging must not move them a bit, or
    # the entropy tables would no longer match what the encoder sends
    head = torch.load(bundle.path / "head.pt", weights_only=True)
    assert all(torch.equal(v, state["student"][f"encoder.{k}"]) for k, v in head.items())
    np.testing.assert_array_equal(
        np.load(bundle.path / "entropy.npz")["w1_freqs"], np.load(plain.path / "entropy.npz")["w1_freqs"]
    )
    assert bundle.manifest["training"]["config"]["stage2"]["ema"] == 0.9


@pytest.fixture(scope="module")
def soup(smoke, tmp_path_factory):
    """A two-member run of the smoke config, with checkpoints copied at the second member's start and middle."""
    root, _, _ = smoke
    out = tmp_path_factory.mktemp("soup")
    cfg = load_config(root / "smoke.toml")
    cfg.stage2.members = 2
    save = Run.save

    def save_and_snapshot(self, **parts):
        save(self, **parts)
        if parts.get("member") == 1 and parts.get("epoch") in (0, 1):
            shutil.copy(self.ckpt, out / f"member-2-epoch-{parts['epoch']}.pt")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Run, "save", save_and_snapshot)
        bundle = train(cfg, out / "models", out / "work", progress=False)
    return out, cfg, bundle


@pytest.mark.slow
def test_stage2_members_ship_the_average_of_their_weights(smoke, soup, tmp_path, monkeypatch):
    root, _, plain = smoke
    out, _, bundle = soup
    history = [h for h in bundle.manifest["training"]["history"] if h["phase"] == "stage2"]
    assert [h["member"] for h in history] == [1] * 4 + [2] * 4
    # the first member draws the streams a one-member run draws, so it is the smoke run; the
    # checkpoint ends with the second member's last weights
    first = torch.load(plain.path / "tail.pt", weights_only=True)
    state = torch.load(out / "work" / "checkpoint.pt", weights_only=False)
    second = {k: v for k, v in state["student"].items() if k.startswith("decoder.")}
    second.update({f"tail.{k}": v for k, v in state["tail"].items()})
    # the second member is a one-member run that draws the second member's streams: it starts
    # afresh from stage 1's weights and betas, with a new optimizer
    seed_streams = Run.seed_streams

    def second_members_streams(self, phase, member=0):
        return seed_streams(self, phase, member + (phase == "stage2"))

    monkeypatch.setattr(Run, "seed_streams", second_members_streams)
    alone = train(load_config(root / "smoke.toml"), tmp_path / "models", tmp_path / "work", progress=False)
    monkeypatch.undo()
    assert all(torch.equal(v, second[k]) for k, v in torch.load(alone.path / "tail.pt", weights_only=True).items())
    souped = torch.load(bundle.path / "tail.pt", weights_only=True)
    floats = [k for k in souped if souped[k].is_floating_point()]
    assert souped.keys() == first.keys() == second.keys()
    assert any(not torch.equal(first[k], second[k]) for k in floats)  # two runs, not one twice
    for k in floats:
        torch.testing.assert_close(souped[k], (first[k] + second[k]) / 2, rtol=1e-5, atol=1e-6)
    # both members start from the same stage-1 weights and leave the encoder and priors frozen:
    # the soup must not move them a bit, or the tables would not match what the encoder sends
    head, plain_head = (torch.load(b.path / "head.pt", weights_only=True) for b in (bundle, plain))
    assert all(torch.equal(head[k], plain_head[k]) for k in head)
    np.testing.assert_array_equal(
        np.load(bundle.path / "entropy.npz")["w1_freqs"], np.load(plain.path / "entropy.npz")["w1_freqs"]
    )


@pytest.mark.slow
@pytest.mark.parametrize("epoch", [0, 1])
def test_a_resume_within_the_second_member_makes_the_same_soup(soup, tmp_path, epoch):
    out, cfg, bundle = soup
    (tmp_path / "work").mkdir()
    shutil.copy(out / f"member-2-epoch-{epoch}.pt", tmp_path / "work" / "checkpoint.pt")
    resumed = train(cfg, tmp_path / "models", tmp_path / "work", resume=True, progress=False)
    a, b = (torch.load(x.path / "tail.pt", weights_only=True) for x in (bundle, resumed))
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_a_soup_does_not_train_on_with_more_cycles(soup, tmp_path):
    out, cfg, _ = soup
    longer = copy.deepcopy(cfg)
    longer.stage2.epochs, longer.stage2.cycles, longer.model.version = 6, 3, "2"
    with pytest.raises(ConfigError, match=r"soup of 2 stage-2 runs"):
        train(longer, tmp_path / "models", out / "work", resume=True, progress=False)


@pytest.mark.slow
def test_a_finished_run_trains_on_with_more_cycles_as_if_they_were_planned(smoke, tmp_path):
    root, _, _ = smoke
    longer = load_config(root / "smoke.toml")
    longer.stage2.epochs, longer.stage2.cycles, longer.model.version = 6, 3, "2"
    planned = train(longer, tmp_path / "m0", tmp_path / "w0", progress=False)
    shutil.copytree(root / "work", tmp_path / "w1")  # the finished two-cycle run
    went_on = train(longer, tmp_path / "m1", tmp_path / "w1", resume=True, progress=False)
    assert went_on.version == "2"
    assert [h["phase"] for h in went_on.manifest["training"]["history"]].count("stage2") == 6
    a = torch.load(planned.path / "tail.pt", weights_only=True)
    b = torch.load(went_on.path / "tail.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    # cycles of another length, fewer cycles, or any other change are a different run; more
    # cycles under the old version would overwrite its bundle
    for change, message in (
        ({"epochs": 8, "cycles": 8}, "may only add"),
        ({"epochs": 4, "cycles": 2, "version": "3"}, "may only add"),
        ({"lr": 0.5, "epochs": 8, "cycles": 4}, r"\[stage2\] lr"),
        ({"epochs": 8, "cycles": 4, "version": "2"}, "give \\[model\\] version a new value"),
    ):
        other = load_config(root / "smoke.toml")
        other.model.version = change.pop("version", "3")
        for key, value in change.items():
            setattr(other.stage2, key, value)
        with pytest.raises(ConfigError, match=message):
            train(other, tmp_path / "m2", tmp_path / "w1", resume=True, progress=False)


@pytest.mark.slow
def test_a_checkpoint_older_than_a_config_key_resumes_with_its_default(smoke, tmp_path):
    # [stage2] ema came after checkpoints that lack it: they were trained without averaging,
    # which is its default, so they resume; asking for averaging is a different run
    root, cfg, bundle = smoke
    shutil.copytree(root / "work", tmp_path / "work")
    state = torch.load(tmp_path / "work" / "checkpoint.pt", weights_only=False)
    del state["config"]["stage2"]["ema"]
    torch.save(state, tmp_path / "work" / "checkpoint.pt")
    resumed = train(cfg, tmp_path / "models", tmp_path / "work", resume=True, progress=False)
    for name in ("head.pt", "tail.pt"):
        a, b = (torch.load(d / name, weights_only=True) for d in (bundle.path, resumed.path))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    averaged = load_config(root / "smoke.toml")
    averaged.stage2.ema = 0.9
    with pytest.raises(ConfigError, match=r"\[stage2\] ema"):
        train(averaged, tmp_path / "other", tmp_path / "work", resume=True, progress=False)


@pytest.mark.slow
def test_a_finished_run_rewrites_its_bundle_at_half_precision(smoke, tmp_path):
    # model.weights changes how the bundle is stored, not what is trained: a resume accepts it
    root, cfg, bundle = smoke
    half = load_config(root / "smoke.toml")
    half.model.weights = "float16"
    shutil.copytree(root / "work", tmp_path / "work")
    out = train(half, tmp_path / "models", tmp_path / "work", resume=True, progress=False)
    assert out.weights == "float16" and out.manifest["training"]["config"]["model"]["weights"] == "float16"
    a = torch.load(bundle.path / "head.pt", weights_only=True)
    b = torch.load(out.path / "head.pt", weights_only=True)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k].half(), b[k]) if a[k].is_floating_point() else torch.equal(a[k], b[k])
    assert out.widths[-1]["bytes_mean"] > 0  # measured again, with the rounded weights


@pytest.mark.slow
def test_resume_refuses_a_different_config(smoke):
    root, cfg, _ = smoke
    cfg2 = load_config(root / "smoke.toml")
    cfg2.stage1.epochs = 5
    with pytest.raises(ConfigError, match="different config"):
        train(cfg2, root / "other", root / "work", resume=True, progress=False)


def test_bad_configs_are_clear():
    for data, message in (
        ({"stage1": {"epochs": "ten"}}, "expected int"),
        ({"stage1": {"bogus": 1}}, "unknown keys"),
        ({"student": {"fractions": [1.0, 0.5]}}, "fractions must increase"),
        ({"stage1": {"target_bits": [1.0]}, "student": {"fractions": [0.5, 1.0]}}, "one positive value per width"),
        ({"optimizer": {}}, "unknown config key"),
        ({"stage2": {"finetune_tail": False, "tail_lr": 1e-4}}, "only set with finetune_tail"),
        ({"stage2": {"epochs": 10, "cycles": 3}}, "cycles must be >= 1 and divide epochs"),
        ({"stage2": {"cycles": 0}}, "cycles must be >= 1"),
        ({"model": {"weights": "int8"}}, "weights must be one of"),
        ({"stage2": {"ema": 1.0}}, "ema must be in"),
        ({"stage2": {"members": 0}}, "members must be >= 1"),
    ):
        with pytest.raises(ConfigError, match=message):
            parse_config(data)


def test_stage2_lr_anneals_each_cycle_and_restarts():
    opt = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=1e-3)
    sched = stage2_schedule(opt, 10)
    lrs = []
    for _ in range(25):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == lrs[10] == lrs[20] == pytest.approx(1e-3)
    assert lrs[9] < 0.03 * 1e-3 and lrs[19] < 0.03 * 1e-3  # annealed at each cycle's end
    assert all(a > b for a, b in zip(lrs[:9], lrs[1:10], strict=True))


@pytest.mark.parametrize("steps", [1, 2, 3, 5, 10, 24, 200])
def test_one_cycle_trains_a_run_of_any_length_and_keeps_a_long_runs_schedule(steps):
    def lrs(sched_of):
        opt = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=1e-3)
        sched, out = sched_of(opt), []
        for _ in range(steps):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return out

    got = lrs(lambda opt: one_cycle(opt, 1e-2, steps, 0.1))  # torch's OneCycleLR divides by zero at 10 steps
    assert all(0 < lr <= 1e-2 for lr in got)
    assert max(got) == pytest.approx(1e-2) if steps < 3 else max(got) > 2 * got[0]  # warms up where it can
    if steps * 0.1 >= 1.5:  # long enough for its own warm-up: exactly torch's schedule
        torch_lrs = lrs(lambda opt: torch.optim.lr_scheduler.OneCycleLR(opt, 1e-2, total_steps=steps, pct_start=0.1))
        assert got == torch_lrs


@pytest.mark.slow
def test_train_cli(tmp_path):
    (tmp_path / "smoke.toml").write_text(
        SMOKE.replace("epochs = 2\nbatch_size = 64\nnormalize", "epochs = 1\nbatch_size = 64\nnormalize")
    )
    proc = subprocess.run(
        [str(BIN / "splitserve"), "train", "--config", str(tmp_path / "smoke.toml"), "--out", str(tmp_path / "m"),
         "--work", str(tmp_path / "w"), "--no-progress"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "wrote" in proc.stdout and (tmp_path / "m" / "smoke" / "1" / "manifest.json").is_file()
    bad = subprocess.run([str(BIN / "splitserve"), "train", "--config", str(tmp_path / "missing.toml")],
                         capture_output=True, text=True)  # fmt: skip
    assert bad.returncode == 2 and "not found" in bad.stderr


@pytest.mark.slow
def test_eval_cli_json_schema(tmp_path, fmnist):
    out = tmp_path / "eval.json"
    proc = subprocess.run(
        [str(BIN / "splitserve"), "eval", "--model", "fmnist-split", "--data", "sample", "--limit", "200",
         "--no-progress", "--json", str(out), "--plot", str(tmp_path / "eval.png")],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    assert 0 < report["teacher"]["accuracy"] <= 1
    widths = report["widths"]
    assert [w["width"] for w in widths] == list(range(fmnist.student.widths))
    for w in widths:
        assert {"top1", "accuracy", "agreement", "bytes_mean", "bytes_p95", "head_ms"} <= set(w)
        assert w["bytes_mean"] > 0 and w["top1"] == w["accuracy"]
    names = {b["name"] for b in report["baselines"]}
    assert {"png", "jpeg-q75", "jpeg-q10", "webp-q75", "fp16", "int8-zstd"} <= names
    assert (tmp_path / "eval.png").stat().st_size > 10_000
    assert "teacher (unsplit" in proc.stdout


@pytest.mark.slow
def test_a_student_on_the_teachers_prefix_trains_on_new_views_every_epoch(tmp_path):
    # [student] prefix with [stage1] cache = 0: the frozen prefix and the teacher run once per
    # view (FreshTargets) and both stages train on views drawn anew every epoch
    text = (
        SMOKE.replace('distill = ["block3"]', "distill = []")
        .replace("stages = [[16, 5, 2], [16, 5, 2]]", 'stages = [[16, 5, 2]]\nprefix = "block1"')
        .replace("kd_weight = 1.0", "cache = 0")
        .replace("[stage2]\n", "[stage2]\nfinetune_tail = true\ntail_lr = 1e-12\n")
    )
    cfg = parse_config(tomllib.loads(text))
    bundle = train(cfg, tmp_path / "models", tmp_path / "work", progress=False)
    history = bundle.manifest["training"]["history"]
    stage1 = [h for h in history if h["phase"] == "stage1"]
    assert stage1[-1]["mse"] < stage1[0]["mse"]
    assert [h["phase"] for h in history].count("stage2") == cfg.stage2.epochs
    assert all(h["seconds"] > 0 for h in history if h["phase"] != "teacher")
    assert all(0 <= w["accuracy"] <= 1 and w["bytes_mean"] > 0 for w in bundle.manifest["widths"])
    # head.pt leaves the frozen prefix to the teacher's weights, and the encoder runs the teacher's layers
    head = torch.load(bundle.path / "head.pt", weights_only=True)
    assert head and not any(k.startswith("prefix.") for k in head)
    own = split_model(bundle.teacher(), "block1")[0].state_dict()
    prefix = bundle.encoder().prefix.state_dict()
    assert prefix.keys() == own.keys() and all(torch.equal(prefix[k], own[k]) for k in own)
    # the tail learns at its own rate (here: none to speak of), the decoder at [stage2] lr
    tail = torch.load(bundle.path / "tail.pt", weights_only=True)
    teacher_tail = bundle.teacher_split()[1].state_dict()
    assert all(torch.allclose(tail[f"tail.{k}"], v, atol=1e-6) for k, v in teacher_tail.items())


def test_augmented_views_are_new_every_epoch_and_the_same_for_a_seed():
    from splitserve.training.augment import Augmentation, AugmentedImages

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (40 + 8 * i, 56, 3), dtype=np.uint8) for i in range(3)]
    source = AugmentedImages(images, 10, Augmentation(size=32))

    def epoch(gen):
        return torch.cat([x for x, _ in source.batches(4, gen)])

    gen = torch.Generator().manual_seed(1)
    first, second = epoch(gen), epoch(gen)
    assert first.shape == (10, 32, 32, 3) and first.dtype == torch.uint8
    assert not torch.equal(first, second)
    assert torch.equal(first, epoch(torch.Generator().manual_seed(1)))
    labels = torch.cat([y for _, y in source.batches(4, torch.Generator())])
    assert labels.tolist() == [-1] * 10  # mixed views have no label: the teacher's logits are the target


@pytest.mark.parametrize("name", ["fmnist-split", "lite0-imagenet"])
def test_the_shipped_configs_parse_and_made_the_bundled_version(name):
    cfg = load_config(ROOT / "configs" / f"{name}.toml")
    assert cfg.model.name == name
    assert list(bundle_dirs(BUNDLED)[name]) == [cfg.model.version]
