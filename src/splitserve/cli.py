"""``splitserve``: models, training, evaluation and export.

splitserve models                                   # the bundled models
splitserve train --config configs/fmnist-split.toml # make a bundle
torchrun --nproc-per-node 2 -m splitserve.cli train --config ...  # data-parallel, one or many machines
splitserve eval --model fmnist-split --json out.json --plot out.png
splitserve export --model fmnist-split --width 0 --format onnx --out heads/
splitserve export --model fmnist-split --format onnx --into-bundle  # every width, for --runtime onnx
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from splitserve.logs import setup_logging


def cmd_models(args: argparse.Namespace) -> int:
    from splitserve.models.zoo import list_models

    bundles = list_models(Path(args.models) if args.models else None)
    if args.json:
        print(json.dumps([{"name": b.name, "version": b.version, "sha256": b.sha256, "widths": b.widths}
                          for b in bundles], indent=2))  # fmt: skip
        return 0
    if not bundles:
        print("no models found")
        return 1
    print(f"{'model':<18} {'version':<8} {'input':<12} {'widths':<7} {'bytes/frame by width':<32} {'accuracy':<18}")
    for b in bundles:
        sizes = " / ".join(f"{w.get('bytes_mean', 0):.0f}" for w in b.widths)
        acc = b.widths[-1].get("accuracy")
        if acc is None:
            acc = b.widths[-1].get("agreement")
            acc_text = f"{acc:.3f} agreement" if acc is not None else "-"
        else:
            acc_text = f"{acc:.4f}"
        shape = "x".join(str(s) for s in b.input.shape)
        print(f"{b.name:<18} {b.version:<8} {shape:<12} {len(b.widths):<7} {sizes:<32} {acc_text:<18}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from splitserve.memory import keep_freed_memory
    from splitserve.training.config import ConfigError, load_config
    from splitserve.training.recipe import train

    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"splitserve train: {exc}", file=sys.stderr)
        return 2
    if args.device:
        cfg.device = args.device
    if args.data_root:
        cfg.data.root = args.data_root
    work = Path(args.work) if args.work else Path("runs") / f"{cfg.model.name}-{cfg.model.version}"
    keep_freed_memory()
    try:
        bundle = train(cfg, Path(args.out), work, resume=args.resume, progress=not args.no_progress)
    except (ConfigError, FileNotFoundError) as exc:
        print(f"splitserve train: {exc}", file=sys.stderr)
        return 1
    if bundle is None:  # a torchrun rank other than 0: rank 0 wrote the bundle
        return 0
    print(f"wrote {bundle.path} (sha256 {bundle.sha256[:16]})")
    for w in bundle.widths:
        acc = w.get("accuracy") if w.get("accuracy") is not None else w.get("agreement")
        print(f"  width {w['index']} ({w['fraction']:.2f}): {w['bytes_mean']:.1f} B/frame, top-1 {acc:.4f}")
    return 0


def _eval_data(bundle, source: str, limit: int):  # type: ignore[no-untyped-def]
    """(images, labels or None, description) to evaluate on."""
    from splitserve.data.samples import load_sample

    data_cfg = bundle.manifest.get("training", {}).get("config", {}).get("data", {})
    dataset = data_cfg.get("dataset")
    images = labels = None
    what = ""
    if source == "auto" and dataset == "fashion-mnist":
        from splitserve.data import fashion_mnist

        if fashion_mnist.available():
            images, labels = fashion_mnist.load("test")
            what = "Fashion-MNIST test images"
    elif source == "auto" and dataset == "photos":
        from splitserve.data import photos

        try:
            all_photos = photos.load_photos()
            holdout = list(data_cfg.get("holdout") or photos.DEFAULT_HOLDOUT)
            seed = bundle.manifest["training"]["config"].get("seed", 0) + photos.HOLDOUT_SEED_OFFSET
            images = photos.holdout_crops(all_photos, holdout, data_cfg.get("test_limit") or 1000,
                                          bundle.input.shape[1], seed)  # fmt: skip
            what = f"crops of held-out photos ({', '.join(holdout)})"
        except (FileNotFoundError, ValueError):
            images = None
    if images is None:
        name = bundle.manifest.get("sample") or ""
        images, labels = load_sample(name)
        what = f"frames of the shipped sample {name!r}"
    if labels is not None and not (labels >= 0).all():
        labels = None
    if limit:
        images = images[:limit]
        labels = labels[:limit] if labels is not None else None
    return images, labels, what


NO_LABELS = " (no labels: fidelity is top-1 agreement with the unsplit teacher)"


def _folder_eval_data(bundle, root: str, limit: int, include_trained: bool):  # type: ignore[no-untyped-def]
    """(images, labels or None, description) of a folder: labelled with a labels.tsv, else any tree of photos."""
    from splitserve.data import labelled

    channels, height, width = bundle.input.shape
    if channels != 3 or height != width:
        raise ValueError(f"--images needs a model with square RGB input; {bundle.name} takes {bundle.input.shape}")
    if Path(root).is_dir() and not (Path(root) / labelled.LABELS_FILE).is_file():
        return _unlabelled_eval_data(root, height, limit)
    return _labelled_eval_data(bundle, root, height, limit, include_trained)


def _unlabelled_eval_data(root: str, size: int, limit: int):  # type: ignore[no-untyped-def]
    """Photos without labels: fidelity is agreement with the teacher, which needs none."""
    import numpy as np

    from splitserve.data import labelled, unlabelled

    short = labelled.eval_short_side(size)
    print(f"no {labelled.LABELS_FILE} in {root}: reading its photos (short side {short}, centre crop {size})",
          flush=True)  # fmt: skip
    found = unlabelled.load_unlabelled([root], short, limit, progress=False)
    if not found.images:
        raise ValueError(f"{root}: no readable images")
    images = np.stack([labelled.center_crop(i, size) for i in found.images])
    what = f"unlabelled photos of {root}"
    if found.unreadable:
        what += f" ({len(found.unreadable)} unreadable files skipped)"
    return images, None, what


def _labelled_eval_data(bundle, root: str, height: int, limit: int, include_trained: bool):  # type: ignore[no-untyped-def]
    """(images, labels, description) of a folder with a labels.tsv, less the images the model was trained on."""
    from splitserve.data import labelled

    rows = labelled.read_labels(root, num_classes=len(bundle.labels))
    trained = set(bundle.manifest.get("training", {}).get("images") or [])
    kept = rows if include_trained else [r for r in rows if r.file not in trained]
    if not kept:
        raise ValueError(f"{bundle.name} was trained on every image in {root}; --include-trained evaluates anyway")
    if limit:
        kept = kept[:limit]
    short = labelled.eval_short_side(height)
    print(f"reading {len(kept)} images from {root} (short side {short}, centre crop {height})", flush=True)
    images, labels = labelled.eval_frames(root, kept, height)
    left_out = sum(r.file in trained for r in rows)
    what = f"labelled images of {root}"
    if trained and not include_trained:
        what += f" (left out: {left_out} images {bundle.name} was trained on)"
    return images, labels, what


def _entry(result, labels_known: bool) -> dict:  # type: ignore[no-untyped-def]
    return {"top1": result.accuracy if labels_known else None, "accuracy": result.accuracy,
            "agreement": result.agreement, "bytes_mean": result.bytes_mean, "bytes_p95": result.bytes_p95}  # fmt: skip


def cmd_eval(args: argparse.Namespace) -> int:
    import time

    from tqdm import tqdm

    from splitserve.memory import keep_freed_memory
    from splitserve.models.zoo import load
    from splitserve.training.evaluate import (
        baseline_specs,
        channels_last,
        evaluate_baseline,
        evaluate_bundle,
        predict_local,
        split_features,
    )

    started = time.perf_counter()
    keep_freed_memory()
    bundle = load(args.model)
    if args.images:
        images, labels, what = _folder_eval_data(bundle, args.images, args.limit, args.include_trained)
    else:
        images, labels, what = _eval_data(bundle, args.data, args.limit)
    print(f"{bundle.name}:{bundle.version} on {len(images)} {what}"
          f"{'' if labels is not None else NO_LABELS}", flush=True)  # fmt: skip
    progress = not args.no_progress
    channels_last(bundle)
    teacher_top1 = predict_local(bundle, images, args.batch_size)
    teacher, widths = evaluate_bundle(bundle, images, labels, args.batch_size, progress, teacher_top1)
    baselines = []
    if not args.no_baselines:
        specs = baseline_specs()
        features = split_features(bundle, images, args.batch_size)  # once, for every feature codec
        for name, codec, params in tqdm(specs, desc="baselines", disable=not progress, leave=False, unit="codec"):
            baselines.append(evaluate_baseline(bundle, name, codec, params, images, labels, teacher_top1,
                                               args.batch_size, progress, features))  # fmt: skip
    metric = "accuracy" if labels is not None else "agreement"
    acc = teacher["accuracy"]
    print(f"teacher (unsplit, on this device {teacher['device_ms']:.2f} ms/frame): "
          f"{'top-1 ' + format(acc, '.4f') if acc is not None else 'agreement 1.0000 (by definition)'}")  # fmt: skip
    # with labels the table shows top-1 and agreement; without, agreement is the only column
    first = "top-1" if labels is not None else "agreement"
    second = "agreement" if labels is not None else ""
    print(f"{'width':<6}{'fraction':>9}{'channels':>9}{first:>11}{second:>11}{'bytes mean':>12}"
          f"{'bytes p95':>11}{'head ms':>9}")  # fmt: skip
    for r in widths:
        value = r.accuracy if r.accuracy is not None else r.agreement
        extra = format(r.agreement, ".4f") if second else ""
        print(f"{r.width:<6}{r.fraction:>9.2f}{r.channels:>9}{value:>11.4f}{extra:>11}"
              f"{r.bytes_mean:>12.1f}{r.bytes_p95:>11.1f}{r.head_ms:>9.3f}")  # fmt: skip
    if baselines:
        print(f"{'baseline':<12}{first:>11}{second:>11}{'bytes mean':>12}{'bytes p95':>11}")
        for b in baselines:
            value = b.accuracy if b.accuracy is not None else b.agreement
            extra = format(b.agreement, ".4f") if second else ""
            print(f"{b.name:<12}{value:>11.4f}{extra:>11}{b.bytes_mean:>12.1f}{b.bytes_p95:>11.1f}")
    known = labels is not None
    report = {
        "model": f"{bundle.name}:{bundle.version}", "frames": int(len(images)), "data": what,
        "metric": metric, "teacher": {**teacher, "top1": teacher["accuracy"]},
        "widths": [{"width": r.width, "fraction": r.fraction, "channels": r.channels, **_entry(r, known),
                    "head_ms": r.head_ms} for r in widths],
        "baselines": [{"name": b.name, **_entry(b, known)} for b in baselines],
        "seconds": round(time.perf_counter() - started, 1),
    }  # fmt: skip
    print(f"evaluated in {report['seconds']:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    if args.plot:
        plot_rate_accuracy(report, Path(args.plot))
        print(f"plot: {args.plot}")
    return 0


def plot_rate_accuracy(report: dict, path: Path) -> None:
    """Top-1 (or agreement) against KB per frame, log x: the split's widths and each codec's quality sweep."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = "accuracy" if report["metric"] == "accuracy" else "agreement"
    fig, ax = plt.subplots(figsize=(8, 5))
    w = report["widths"]
    ax.plot([r["bytes_mean"] / 1000 for r in w], [r[key] for r in w], "o-", color="tab:red", lw=2,
            label="split, entropic (widths)", zorder=3)  # fmt: skip
    for r in w:
        ax.annotate(f"w{r['width']}", (r["bytes_mean"] / 1000, r[key]), textcoords="offset points", xytext=(4, -10),
                    fontsize=7, color="tab:red")  # fmt: skip
    groups: dict[str, list] = {}
    for b in report["baselines"]:
        groups.setdefault(b["name"].split("-")[0], []).append(b)
    for name, items in groups.items():
        items.sort(key=lambda b: b["bytes_mean"])
        ax.plot([b["bytes_mean"] / 1000 for b in items], [b[key] for b in items], "s--" if len(items) > 1 else "s",
                label=name if len(items) == 1 else f"{name} (quality sweep)", alpha=0.8)  # fmt: skip
    if report["teacher"].get("accuracy") is not None:
        ax.axhline(report["teacher"]["accuracy"], color="0.5", linestyle=":", label="teacher (unsplit)")
    ax.set_xscale("log")
    ax.set_xlabel("KB per frame (log)")
    ax.set_ylabel("top-1 accuracy" if key == "accuracy" else "top-1 agreement with the teacher")
    ax.set_title(f"{report['model']}: rate vs {key} ({report['frames']} frames)")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def cmd_export(args: argparse.Namespace) -> int:
    from splitserve.models.export import export_head, export_into_bundle
    from splitserve.models.zoo import load

    bundle = load(args.model)
    if args.into_bundle:
        if args.format != "onnx":
            print("splitserve export: --into-bundle writes ONNX heads; drop --format torchscript", file=sys.stderr)
            return 2
        bundle = export_into_bundle(bundle)
        for name in bundle.device_files():
            if name.endswith(".onnx"):
                print(bundle.path / name)
        return 0
    if not args.out:
        print("splitserve export: give --out DIR, or --into-bundle", file=sys.stderr)
        return 2
    width = bundle.width_count - 1 if args.width < 0 else args.width
    try:
        for path in export_head(bundle, width, args.format, Path(args.out)):
            print(path)
    except ValueError as exc:
        print(f"splitserve export: {exc}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="splitserve", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--log-level", default="info")
    sub = p.add_subparsers(dest="command", required=True)

    m = sub.add_parser("models", help="list models (the bundled ones, or a repository's)")
    m.add_argument("--models", help="model repository directory (default: the bundled models)")
    m.add_argument("--json", action="store_true")
    m.set_defaults(func=cmd_models)

    t = sub.add_parser("train", help="train a split model from a TOML config and write its bundle")
    t.add_argument("--config", required=True, help="training config (see configs/)")
    t.add_argument("--out", default="models", help="model repository to write <name>/<version>/ into")
    t.add_argument("--work", help="checkpoint directory (default runs/<name>-<version>)")
    t.add_argument(
        "--resume",
        action="store_true",
        help="continue from the checkpoint in --work; with a config that only adds [stage2] cycles "
        "(and a new [model] version), train a finished run on",
    )
    t.add_argument("--device", help="cpu | cuda (default: the config's, auto)")
    t.add_argument("--data-root", help="the dataset's folder (overrides [data] root)")
    t.add_argument("--no-progress", action="store_true", help="no progress bars (for logs)")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="rate vs accuracy of every width and the baselines, on real payloads")
    e.add_argument("--model", required=True, help="model name or bundle directory")
    e.add_argument("--data", choices=["auto", "sample"], default="auto",
                   help="auto: the model's test set when installed, else its shipped sample")  # fmt: skip
    e.add_argument(
        "--images",
        metavar="DIR",
        help="a folder of labelled images with a labels.tsv (file, index, wnid, name), e.g. an ImageNet "
        "validation subset, or any folder of photos without one (then fidelity is top-1 agreement with the "
        "teacher); evaluated with ImageNet preprocessing (short side 256, centre crop 224)",
    )
    e.add_argument(
        "--include-trained",
        action="store_true",
        help="with --images: keep the images the model was trained on (left out by default)",
    )
    e.add_argument("--limit", type=int, default=0, help="evaluate on the first N frames only")
    e.add_argument("--batch-size", type=int, default=64)
    e.add_argument("--no-baselines", action="store_true", help="skip PNG / JPEG / WebP / fp16 / int8")
    e.add_argument("--no-progress", action="store_true")
    e.add_argument("--json", help="write the results as JSON")
    e.add_argument("--plot", help="write accuracy vs bytes (PNG)")
    e.set_defaults(func=cmd_eval)

    x = sub.add_parser("export", help="export a head (one width) as ONNX or TorchScript")
    x.add_argument("--model", required=True)
    x.add_argument("--width", type=int, default=-1, help="width index (default: widest)")
    x.add_argument("--format", choices=["onnx", "torchscript"], default="onnx")
    x.add_argument("--out", help="output directory")
    x.add_argument("--into-bundle", action="store_true",
                   help="write the ONNX heads of every width (and the teacher) into the bundle and its manifest, "
                   "for device-client --runtime onnx")  # fmt: skip
    x.set_defaults(func=cmd_export)

    args = p.parse_args(argv)
    setup_logging(args.log_level)
    logging.getLogger("splitserve").setLevel(args.log_level.upper())
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as exc:  # bad model names, files, settings: say so, no traceback
        print(f"splitserve {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
