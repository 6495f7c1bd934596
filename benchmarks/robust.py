"""Robust fine-tuning options against plain `fine_tune`, on clean and shifted tests.

Each arm is one `tltf.fine_tune` call with the defaults and one change:
- "plain": the defaults;
- "l2sp": `regularize="l2sp"` (L2-SP, Li et al. 2018: stage 2 pulled toward the
  pretrained weights);
- "wise 0.5": `wise=0.5` (WiSE-FT, Wortsman et al. 2022: the end weights mixed
  half and half with stage 1's);
- "wise auto": `wise="auto"` (the mix picked on the guard's held-out slice);
- "adapt": `bn="adapt"` (AdaBN, Li et al. 2016: the BatchNorm statistics
  re-estimated on the training images first; VGG16 has no BatchNorm).

Every model is scored on the clean test images and on two corrupted copies of
them ("noise": Gaussian, sigma 48 of 255; "blur": Gaussian, radius 2 px): the
shift the published claims are about (WiSE-FT: gains on shifted data at no loss
in-distribution). Real data from `benchmarks/realdata.py` at 64 px.

Usage:
    .venv/bin/python benchmarks/robust.py [--bases demo vgg16] \\
        [--tasks digits fonts textures] [--k 5 10 20] [--seeds 0 1 2] [--arms ...] \\
        [--shifts noise blur] [--no-guard]

`--shifts` takes `realdata.corrupt`'s kinds ("noise:16" for a milder noise).
`--no-guard` turns the stage-2 guard off (`keep_best=False`) in every arm: with
the defaults, the guard often keeps stage 1's weights at small k, and then every
arm ends where plain `fine_tune` does.

The last line gives each arm's mean accuracy on the clean and on the shifted
tests, and the ratio of "wise auto" over "plain" on the shifted ones.
"""

from __future__ import annotations

import tltf  # noqa: F401  # isort: skip  (first: imports TensorFlow quietly)

import argparse
import time

import numpy as np
import realdata

ARMS = {
    "plain": {},
    "l2sp": {"regularize": "l2sp"},
    "wise 0.5": {"wise": 0.5},
    "wise auto": {"wise": "auto"},
    "adapt": {"bn": "adapt"},
}
SHIFTS = ("noise", "blur")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bases", nargs="+", default=["demo"])
    parser.add_argument("--tasks", nargs="+", default=["digits", "fonts", "textures"])
    parser.add_argument("--k", type=int, nargs="+", default=[5, 10, 20])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument(
        "--shifts", nargs="+", default=list(SHIFTS), help="realdata.corrupt kinds"
    )
    parser.add_argument(
        "--no-guard",
        action="store_true",
        help="keep_best=False in every arm: what stage 2 itself does",
    )
    parser.add_argument("--weights-dir", default=None)
    args = parser.parse_args()
    common = {"keep_best": False} if args.no_guard else {}
    if args.no_guard and "wise auto" in args.arms:
        parser.error("'wise auto' picks its mix on the guard's slice: drop --no-guard")
    weights_dir = realdata.weights_folder(args.weights_dir, args.bases)
    clean: dict[str, list[float]] = {arm: [] for arm in args.arms}
    shifted: dict[str, list[float]] = {arm: [] for arm in args.arms}
    for task in args.tasks:
        for name in args.bases:
            for k in args.k:
                for seed in args.seeds:
                    train, (xs, ys) = realdata.task_split(task, k, seed)
                    tests = [(xs, ys)] + [
                        (realdata.corrupt(xs, kind, seed + 1), ys)
                        for kind in args.shifts
                    ]
                    cells = []
                    for arm in args.arms:
                        start = time.perf_counter()
                        got = realdata.fine_tune_accuracy(
                            name,
                            weights_dir,
                            train,
                            tests,
                            seed,
                            {**common, **ARMS[arm]},
                        )
                        clean[arm].append(got[0])
                        shifted[arm].append(float(np.mean(got[1:])))
                        cells.append(
                            f"{arm} {got[0]:.3f}/{shifted[arm][-1]:.3f} "
                            f"({time.perf_counter() - start:.0f}s)"
                        )
                    print(
                        f"{task:8s} {name:6s} k={k:<3d} seed {seed}  clean/shifted: "
                        + "  ".join(cells),
                        flush=True,
                    )
    line = "; ".join(
        f"{arm} {np.mean(clean[arm]):.3f}/{np.mean(shifted[arm]):.3f}"
        for arm in args.arms
    )
    ratio = ""
    if "wise auto" in shifted and "plain" in shifted:
        a, b = np.mean(shifted["wise auto"]), np.mean(shifted["plain"])
        ratio = f"; shifted, wise auto / plain = {a:.3f} / {b:.3f} = {a / b:.3f}x"
    print(
        f"mean accuracy clean/shifted over {len(clean[args.arms[0]])} runs: "
        f"{line}{ratio}"
    )


if __name__ == "__main__":
    main()
