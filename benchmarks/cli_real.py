"""`tltf train` on a folder of real images, against logistic regression on its pixels.

The path a command-line user takes, end to end: a few-shot split of a real task
(`benchmarks/realdata.py`; MNIST by default, the example of issue 11) is written
as image folders (one PNG per image, one subfolder per class), then

    tltf train --base BASE --train TRAIN_DIR --seed SEED --out RUN -q
    tltf evaluate RUN --data TEST_DIR --out EVAL

run in this process through `tltf.cli.main`, with every schedule setting left to
its default (`--image-size 64 --weights-dir` added for a registry base such as
vgg16). The baseline, on the same images: scikit-learn's logistic regression on
the grayscale pixels (`realdata.logreg_pixels`).

Usage:
    .venv/bin/python benchmarks/cli_real.py [--bases demo vgg16] [--tasks mnist] \
        [--k 24] [--seeds 0 1 2] [--test 100] [--weights-dir DIR]

The last line prints the mean test accuracy of `tltf train` over all runs
divided by that of the pixels.
"""

from __future__ import annotations

import tltf  # noqa: F401  isort: skip  (first: imports TensorFlow quietly)

import argparse
import contextlib
import io
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import realdata
from PIL import Image

from tltf.cli import main as tltf_main


def write_folder(images: np.ndarray, labels: np.ndarray, folder: Path) -> Path:
    """`images` as PNG files in one subfolder per class (zero-padded indices)."""
    width = len(str(int(labels.max())))
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        sub = folder / f"{int(label):0{width}d}"
        sub.mkdir(parents=True, exist_ok=True)
        pixels = np.clip(np.rint(image), 0, 255).astype("uint8")
        Image.fromarray(pixels).save(sub / f"{i:05d}.png")
    return folder


def cli_accuracy(
    base: str, train_dir: Path, test_dir: Path, seed: int, work: Path, weights_dir
) -> float:
    """`tltf train` then `tltf evaluate` with the defaults: the test accuracy."""
    run, report = work / "run", work / "eval"
    train = [
        "train",
        "--base",
        base,
        "--train",
        str(train_dir),
        "--seed",
        str(seed),
        "--out",
        str(run),
        "-q",
    ]
    if base != "demo" and not Path(base).is_dir():
        train += ["--image-size", "64", "--weights-dir", str(weights_dir)]
    for argv in (
        train,
        ["evaluate", str(run), "--data", str(test_dir), "--out", str(report)],
    ):
        with contextlib.redirect_stdout(io.StringIO()):  # the evaluation report
            status = tltf_main(argv)
        if status != 0:
            raise SystemExit(f"tltf {' '.join(argv)} exited with {status}")
    return float(
        json.loads((report / "report.json").read_text())["metrics"]["accuracy"]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bases", nargs="+", default=["demo"])
    parser.add_argument("--tasks", nargs="+", default=["mnist"])
    parser.add_argument("--k", type=int, nargs="+", default=[24])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--test", type=int, default=100, help="test images per class")
    parser.add_argument("--weights-dir", default=None)
    args = parser.parse_args()
    weights_dir = realdata.weights_folder(args.weights_dir, args.bases)
    ours, pixels = [], []
    for task in args.tasks:
        x, y = realdata.task_data(task, 64)
        for base in args.bases:
            for k in args.k:
                for seed in args.seeds:
                    train, test = realdata.few_shot(x, y, k, seed, args.test)
                    start = time.perf_counter()
                    with tempfile.TemporaryDirectory(prefix="tltf_cli_real_") as tmp:
                        work = Path(tmp)
                        accuracy = cli_accuracy(
                            base,
                            write_folder(*train, work / "train"),
                            write_folder(*test, work / "test"),
                            seed,
                            work,
                            weights_dir,
                        )
                    seconds = time.perf_counter() - start
                    ours.append(accuracy)
                    pixels.append(realdata.logreg_pixels(train, test))
                    print(
                        f"{task:8s} {base:6s} k={k:<3d} seed {seed}  tltf train: "
                        f"{accuracy:.3f} ({seconds:.0f}s)  logreg pixels: "
                        f"{pixels[-1]:.3f}",
                        flush=True,
                    )
    print(
        f"mean test accuracy, tltf train / logreg pixels: {np.mean(ours):.3f} / "
        f"{np.mean(pixels):.3f} = {np.mean(ours) / np.mean(pixels):.2f}x"
    )


if __name__ == "__main__":
    main()
