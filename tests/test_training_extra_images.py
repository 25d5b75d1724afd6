"""[data] extra_images: unlabelled photo folders join function matching, never a held-out image."""

import logging
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from splitserve.data import unlabelled
from splitserve.data.samples import load_sample
from splitserve.models.manifest import file_sha256
from splitserve.training.config import ConfigError, parse_config
from splitserve.training.data import build_data


@pytest.fixture
def folders(tmp_path):
    """A labelled folder (3 training, 3 held-out images) and a tree of unlabelled ones beside it."""
    photos, _ = load_sample("photos-224")
    root = tmp_path / "labelled"
    root.mkdir()
    rows = ["file\tindex\twnid\tname"]
    for i, idx in enumerate([5, 0, 10, 3, 20, 7]):  # multiples of 10 are held out
        Image.fromarray(photos[i]).save(root / f"img_{i}.JPEG", quality=90)
        rows.append(f"img_{i}.JPEG\t{idx}\tn{idx:08d}\tclass_{idx}")
    (root / "labels.tsv").write_text("\n".join(rows) + "\n")
    extra = tmp_path / "extra"
    (extra / "cats").mkdir(parents=True)
    (extra / "dogs" / "small").mkdir(parents=True)
    Image.fromarray(photos[10]).save(extra / "cats" / "a.jpg", quality=90)
    Image.fromarray(photos[11]).convert("L").save(extra / "cats" / "b.PNG")  # grey: made RGB
    Image.fromarray(photos[12][:90, :130]).save(extra / "dogs" / "small" / "c.webp")  # smaller than short_side
    (extra / "dogs" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (extra / "dogs" / "notes.txt").write_text("not an image")
    shutil.copy(root / "img_2.JPEG", extra / "dogs" / "held_out_copy.jpg")  # class 10: held out
    return root, extra


def config(root, extra, **data):
    return parse_config({
        "data": {"dataset": "labelled", "root": str(root), "input_shape": [3, 224, 224], "mean": [0.5] * 3,
                 "std": [0.5] * 3, "short_side": 96, "extra_images": [str(extra)], **data},
    })  # fmt: skip


def test_unlabelled_folders_are_read_in_order_and_bad_files_counted(folders):
    root, extra = folders
    held = frozenset(file_sha256(root / f"img_{i}.JPEG") for i in (1, 2, 4))
    got = unlabelled.load_unlabelled([extra], 96, exclude_digests=held, progress=False)
    assert [p.relative_to(extra).as_posix() for p in got.files] == ["cats/a.jpg", "cats/b.PNG", "dogs/small/c.webp"]
    assert [p.name for p in got.unreadable] == ["broken.jpg"]
    assert [p.name for p in got.excluded] == ["held_out_copy.jpg"]
    assert all(i.dtype == np.uint8 and i.ndim == 3 and i.shape[2] == 3 and min(i.shape[:2]) == 96 for i in got.images)
    # a limit takes the first files in sorted order, the same on every machine
    first = unlabelled.load_unlabelled([extra], 96, limit=2, progress=False)
    assert [p.name for p in first.files] == ["a.jpg", "b.PNG"]


def test_extra_images_join_the_training_views_but_no_held_out_copy(folders, caplog):
    root, extra = folders
    with caplog.at_level(logging.WARNING, "splitserve.train"):
        data = build_data(config(root, extra).data, 0)
    assert len(data.train.images) == 3 + 3  # the labelled folder's 3 training images and 3 extra ones
    assert len(data.test_images) == 3 and sorted(data.test_labels.tolist()) == [0, 10, 20]
    assert data.train_files == ["img_0.JPEG", "img_3.JPEG", "img_5.JPEG"]  # what eval leaves out: labelled ones
    assert "1 files are not readable images" in caplog.text
    assert "1 files are copies of held-out images, left out" in caplog.text
    x, y = next(data.train.batches(4, torch.Generator().manual_seed(0)))
    assert tuple(x.shape) == (4, 224, 224, 3) and y.tolist() == [-1] * 4
    assert len(build_data(config(root, extra, extra_limit=1).data, 0).train.images) == 3 + 1
    # evaluating fewer held-out images here does not make the others trainable
    assert len(build_data(config(root, extra, test_limit=1).data, 0).train.images) == 3 + 3


def test_bad_extra_images_are_clear(folders, tmp_path):
    root, extra = folders
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    for cfg, message in (
        (lambda: config(root, tmp_path / "missing"), "no such folder of images"),
        (lambda: config(root, tmp_path / "empty"), "no images"),
        (lambda: config(root, extra / "dogs" / "small", extra_limit=-1), "extra_limit must be >= 0"),
    ):
        with pytest.raises(ConfigError, match=message):
            build_data(cfg().data, 0)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x.jpg").write_bytes(b"junk")
    with pytest.raises(ConfigError, match="no readable images"):
        build_data(config(root, tmp_path / "junk").data, 0)
    with pytest.raises(ConfigError, match='extra_images needs dataset = "labelled"'):
        parse_config({"data": {"dataset": "fashion-mnist", "extra_images": [str(extra)]}})


def test_extra_cap_draws_a_large_folder_as_if_it_were_small(folders, tmp_path):
    root, _ = folders
    photos, _ = load_sample("photos-224")
    big, small = tmp_path / "big", tmp_path / "small"
    big.mkdir(), small.mkdir()
    for i in range(8):  # none of them a copy of the labelled folder's images (0-5)
        Image.fromarray(photos[13 + i]).save(big / f"{i}.jpg", quality=90)
    Image.fromarray(photos[21]).save(small / "only.jpg", quality=90)
    data = build_data(config(root, big, extra_images=[str(big), str(small)], extra_cap=2).data, 0).train
    # 3 labelled images (1 each), 8 big ones (2/8 each: the folder weighs 2), 1 small one (1)
    assert data.weights.tolist() == [1.0] * 3 + [0.25] * 8 + [1.0]
    assert len(data.images) == 12  # every image is still there
    drawn = torch.multinomial(data.weights, 60_000, replacement=True, generator=torch.Generator().manual_seed(0))
    share = torch.bincount(drawn, minlength=12).float() / 60_000
    assert abs(share[3:11].sum().item() - 2 / 6) < 0.01 and abs(share[11].item() - 1 / 6) < 0.01
    # no cap: every image alike, drawn as before the option existed
    assert build_data(config(root, big).data, 0).train.weights is None
    with pytest.raises(ConfigError, match="extra_cap must be >= 0"):
        config(root, big, extra_cap=-1)


def test_capped_views_come_from_the_weighted_draw(folders):
    from splitserve.training.augment import Augmentation, AugmentedImages

    images = [np.full((40, 40, 3), v, np.uint8) for v in (0, 100, 200)]
    aug = Augmentation(size=16, jitter=0, mixup=0)
    source = AugmentedImages(images, 64, aug, weights=[0.0, 1.0, 0.0])
    frames, _ = next(source.batches(64, torch.Generator().manual_seed(0)))
    assert (frames == 100).all()  # only the one image with weight can be drawn
    with pytest.raises(ValueError, match="one non-negative value per image"):
        AugmentedImages(images, 4, aug, weights=[1.0, 1.0])


@pytest.mark.slow
def test_a_model_trains_on_a_labelled_folder_and_extra_photos(folders, tmp_path, caplog):
    """The whole recipe with [data] extra_images: views come from both folders; held-out images are scored."""
    from splitserve.models.backbones import build_teacher
    from splitserve.training.recipe import train

    root, extra = folders
    weights = tmp_path / "teacher.pt"
    torch.manual_seed(0)
    torch.save(build_teacher("fmnist-cnn", {"num_classes": 1000, "in_channels": 3}).state_dict(), weights)
    cfg = parse_config({
        "seed": 1,
        "model": {"name": "tiny-photos", "version": "1"},
        "data": {"dataset": "labelled", "root": str(root), "input_shape": [3, 28, 28], "mean": [0.5] * 3,
                 "std": [0.5] * 3, "short_side": 32, "extra_images": [str(extra)], "extra_cap": 1,
                 "crops_per_epoch": 64},
        "teacher": {"family": "fmnist-cnn", "args": {"num_classes": 1000, "in_channels": 3},
                    "weights": str(weights), "split": "block2"},
        "student": {"stages": [[8, 5, 2], [8, 5, 2]], "bottleneck": 4, "fractions": [0.5, 1.0],
                    "decoder_hidden": 8},
        "stage1": {"epochs": 2, "batch_size": 32, "normalize": True},
        "stage2": {"epochs": 1, "batch_size": 32},
    })  # fmt: skip
    with caplog.at_level(logging.INFO, "splitserve.train"):
        bundle = train(cfg, tmp_path / "models", tmp_path / "work", progress=False)
    assert "[data] extra_images: 3 photos" in caplog.text
    manifest = bundle.manifest
    assert manifest["training"]["config"]["data"]["extra_images"] == [str(extra)]
    assert manifest["training"]["images"] == ["img_0.JPEG", "img_3.JPEG", "img_5.JPEG"]  # the labelled ones
    assert manifest["evaluation"]["frames"] == 3  # the held-out classes 0, 10, 20
    stage1 = [h for h in manifest["training"]["history"] if h["phase"] == "stage1"]
    assert len(stage1) == 2 and all(h["seconds"] > 0 for h in stage1)
    assert all(w["bytes_mean"] > 0 and 0 <= w["accuracy"] <= 1 for w in manifest["widths"])
