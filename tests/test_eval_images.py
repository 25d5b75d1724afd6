"""`splitserve eval --images DIR`: labelled folders read right, bad ones refused clearly."""

import json
import subprocess

import numpy as np
import pytest
from conftest import BIN
from PIL import Image

from splitserve.data import labelled
from splitserve.data.samples import load_sample


def _write_folder(root, n=6, labels=None):
    """A tiny labelled folder from the shipped photo sample; the true label is the teacher's own guess."""
    images, _ = load_sample("photos-224")
    root.mkdir(parents=True, exist_ok=True)
    rows = ["file\tindex\twnid\tname"]
    for i in range(n):
        name = f"img_{i}.JPEG"
        # not square, larger than 256: the preprocessing must resize and centre-crop
        Image.fromarray(images[i]).resize((300, 260)).save(root / name, quality=95)
        idx = labels[i] if labels is not None else i
        rows.append(f"{name}\t{idx}\tn{idx:08d}\tclass_{idx}")
    (root / "labels.tsv").write_text("\n".join(rows) + "\n")
    return root


def test_labels_are_read_and_frames_preprocessed(tmp_path):
    root = _write_folder(tmp_path / "set", labels=[5, 0, 10, 3, 20, 7])
    rows = labelled.read_labels(root, num_classes=1000)
    assert [r.index for r in rows] == [5, 0, 10, 3, 20, 7] and rows[0].file == "img_0.JPEG"
    train, held = labelled.held_out(rows, 10)
    assert [r.index for r in held] == [0, 10, 20] and [r.index for r in train] == [5, 3, 7]
    frames, y = labelled.eval_frames(root, rows, 224)
    assert frames.shape == (6, 224, 224, 3) and frames.dtype == np.uint8
    assert y.tolist() == [5, 0, 10, 3, 20, 7]


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda root: (root / "labels.tsv").unlink(), "no labels.tsv"),
        (lambda root: (root / "labels.tsv").write_text("a\tb\n"), "header"),
        (lambda root: (root / "labels.tsv").write_text("file\tindex\twnid\tname\nimg_0.JPEG\tseven\tn\tx\n"),
         "not an integer"),
        (lambda root: (root / "labels.tsv").write_text("file\tindex\twnid\tname\nimg_0.JPEG\t5000\tn\tx\n"),
         "outside"),
        (lambda root: (root / "labels.tsv").write_text("file\tindex\twnid\tname\nmissing.JPEG\t1\tn\tx\n"),
         "not found"),
        (lambda root: (root / "labels.tsv").write_text("file\tindex\twnid\tname\n../img_0.JPEG\t1\tn\tx\n"),
         "not found"),
        (lambda root: (root / "labels.tsv").write_text("file\tindex\twnid\tname\n"), "no images"),
    ],
)
def test_bad_folders_are_refused_clearly(tmp_path, mutate, message):
    root = _write_folder(tmp_path / "set", n=2)
    mutate(root)
    with pytest.raises(labelled.LabelsError, match=message):
        labelled.read_labels(root, num_classes=1000)


def test_unreadable_image_is_named(tmp_path):
    root = _write_folder(tmp_path / "set", n=2)
    (root / "img_1.JPEG").write_bytes(b"not a jpeg")
    rows = labelled.read_labels(root)
    with pytest.raises(labelled.LabelsError, match="img_1.JPEG"):
        labelled.eval_frames(root, rows)


@pytest.mark.slow
def test_eval_cli_on_a_labelled_folder(tmp_path, lite0):
    images, _ = load_sample("photos-224")
    from splitserve.training.evaluate import predict_local

    # label each image with the teacher's own top-1 on its centre crop: the teacher must then score 1.0
    root = _write_folder(tmp_path / "set", n=4, labels=[0, 0, 0, 0])
    frames, _ = labelled.eval_frames(root, labelled.read_labels(root), 224)
    truth = predict_local(lite0, frames).tolist()
    _write_folder(tmp_path / "set", n=4, labels=truth)
    out = tmp_path / "eval.json"
    proc = subprocess.run(
        [str(BIN / "splitserve"), "eval", "--model", "lite0-imagenet", "--images", str(root), "--no-progress",
         "--json", str(out), "--plot", str(tmp_path / "eval.png")],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["frames"] == 4 and report["metric"] == "accuracy"
    assert report["teacher"]["top1"] == 1.0
    for w in report["widths"]:
        assert {"top1", "agreement", "bytes_mean", "bytes_p95"} <= set(w) and w["bytes_mean"] > 0
        assert w["top1"] == w["agreement"]  # the labels are the teacher's answers
    names = {b["name"] for b in report["baselines"]}
    assert {"png", "jpeg-q5", "jpeg-q95", "webp-q0", "webp-q75", "int8-zstd"} <= names
    jpeg = sorted(b["bytes_mean"] for b in report["baselines"] if b["name"].startswith("jpeg"))
    # the sweep spans ~1-2 KB to well over 10 KB (how far depends on the pictures)
    assert jpeg[0] < 2500 and jpeg[-1] > 10000 and jpeg[-1] > 5 * jpeg[0]
    assert (tmp_path / "eval.png").stat().st_size > 10_000
    assert "top-1" in proc.stdout


@pytest.mark.slow
def test_eval_cli_errors_are_one_line(tmp_path):
    proc = subprocess.run(
        [str(BIN / "splitserve"), "eval", "--model", "lite0-imagenet", "--images", str(tmp_path / "nowhere")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2 and "no such directory" in proc.stderr and "Traceback" not in proc.stderr
    root = _write_folder(tmp_path / "set", n=1)
    (root / "labels.tsv").unlink()
    (root / "img_0.JPEG").unlink()  # without a labels.tsv a folder is read as photos: here there are none
    proc = subprocess.run([str(BIN / "splitserve"), "eval", "--model", "lite0-imagenet", "--images", str(root)],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 2 and "no images" in proc.stderr and "Traceback" not in proc.stderr
    (root / "labels.tsv").write_text("file\tindex\twnid\tname\nimg_9.JPEG\t1\tn\tx\n")
    proc = subprocess.run([str(BIN / "splitserve"), "eval", "--model", "lite0-imagenet", "--images", str(root)],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 2 and "not found" in proc.stderr and "Traceback" not in proc.stderr
    proc = subprocess.run([str(BIN / "splitserve"), "eval", "--model", "fmnist-split", "--images", str(root)],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 2 and "RGB" in proc.stderr


@pytest.mark.slow
def test_eval_cli_on_an_unlabelled_folder_measures_agreement(tmp_path, lite0):
    """A folder without labels.tsv: any tree of photos; fidelity is top-1 agreement with the teacher."""
    from splitserve.training.evaluate import evaluate_bundle

    images, _ = load_sample("photos-224")
    root = tmp_path / "photos"
    (root / "street" / "night").mkdir(parents=True)
    Image.fromarray(images[0]).resize((300, 260)).save(root / "a.jpg", quality=95)
    Image.fromarray(images[1]).resize((260, 300)).save(root / "street" / "b.png")
    Image.fromarray(images[2]).resize((400, 280)).save(root / "street" / "night" / "c.webp")
    (root / "street" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    out = tmp_path / "eval.json"
    proc = subprocess.run(
        [str(BIN / "splitserve"), "eval", "--model", "lite0-imagenet", "--images", str(root), "--no-progress",
         "--no-baselines", "--json", str(out)],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "agreement with the unsplit teacher" in proc.stdout
    report = json.loads(out.read_text())
    assert report["frames"] == 3 and report["metric"] == "agreement" and "1 unreadable" in report["data"]
    assert report["teacher"]["top1"] is None
    # the same frames (sorted paths, ImageNet preprocessing) measured in-process agree exactly
    files = [root / "a.jpg", root / "street" / "b.png", root / "street" / "night" / "c.webp"]
    frames = np.stack([labelled.center_crop(labelled.load_image(f, 256), 224) for f in files])
    _, widths = evaluate_bundle(lite0, frames, None, progress=False)
    assert [w["agreement"] for w in report["widths"]] == [r.agreement for r in widths]
    assert all(w["top1"] is None for w in report["widths"])
