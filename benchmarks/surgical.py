"""Which blocks to fine-tune under an input-level shift: top, bottom or Auto-RGN.

Lee et al. 2023 ("Surgical fine-tuning improves adaptation to distribution
shifts") find that when the *input* changes (corruptions: noise, blur, inverted
contrast), tuning the first block beats tuning the last ones, and that Auto-RGN
(every layer's rate scaled by its relative gradient norm) finds that without
being told. This benchmark checks the claim on tltf's defaults.

Tasks: the target images are corrupted, train and test alike, so the shift is
between the base's pretraining images and the whole target task:
- "shapes": tltf's procedural `shapes_target` (near the demo base's source);
- "digits", "fonts", "textures": the real datasets of `benchmarks/realdata.py`.
Corruptions: "invert" (255 - x), "noise" (Gaussian, sigma 48 of 255), "blur"
(Gaussian, radius 2 px at 64 px).

Arms, each a `tltf.fine_tune` call with the defaults and one change:
- "head only": `fine_tune_epochs=0` (stage 1: tltf's converged linear probe);
- "top (auto)": the defaults (`unfreeze="auto"`: the top blocks the probe picks);
- "first block": `unfreeze={"range": [0, 0]}`;
- "first two": `unfreeze={"range": [0, 1]}`;
- "auto-rgn": `unfreeze="all", lr_policy="auto_rgn"`;
- "l2sp": the defaults with `regularize="l2sp"` (optional: `--arms`).

Usage:
    .venv/bin/python benchmarks/surgical.py [--bases demo vgg16] \\
        [--tasks shapes digits] [--corruptions invert noise blur] [--k 10] \\
        [--seeds 0 1] [--arms ...] [--no-guard] [--fine-tune-lr 1e-3]

`--no-guard` turns the stage-2 guard off in every arm (`keep_best=False`), so
that the table shows what each choice of blocks does, not what the guard kept;
`--fine-tune-lr` sets every arm's stage-2 rate.

The last line prints the mean test accuracy of each arm, and the best bottom
arm's (first block, first two) over the defaults' as a ratio.
"""

from __future__ import annotations

import tltf  # noqa: F401  # isort: skip  (first: imports TensorFlow quietly)

import argparse
import time

import numpy as np
import realdata

ARMS = {
    "head only": {"fine_tune_epochs": 0},
    "top (auto)": {},
    "first block": {"unfreeze": {"range": [0, 0]}},
    "first two": {"unfreeze": {"range": [0, 1]}},
    "auto-rgn": {"unfreeze": "all", "lr_policy": "auto_rgn"},
    "l2sp": {"regularize": "l2sp"},
}
DEFAULT_ARMS = ["head only", "top (auto)", "first block", "first two", "auto-rgn"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bases", nargs="+", default=["demo"])
    parser.add_argument("--tasks", nargs="+", default=["shapes", "digits"])
    parser.add_argument("--corruptions", nargs="+", default=["invert", "noise", "blur"])
    parser.add_argument("--k", type=int, nargs="+", default=[10])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--arms", nargs="+", default=DEFAULT_ARMS, choices=list(ARMS))
    parser.add_argument(
        "--no-guard",
        action="store_true",
        help="keep_best=False in every arm: the raw effect of stage 2",
    )
    parser.add_argument(
        "--fine-tune-lr", type=float, default=None, help="stage-2 rate of every arm"
    )
    parser.add_argument("--weights-dir", default=None)
    args = parser.parse_args()
    common = {}
    if args.no_guard:
        common["keep_best"] = False
    if args.fine_tune_lr is not None:
        common["fine_tune_lr"] = args.fine_tune_lr
    weights_dir = realdata.weights_folder(args.weights_dir, args.bases)
    scores: dict[str, list[float]] = {arm: [] for arm in args.arms}
    for task in args.tasks:
        for kind in args.corruptions:
            for name in args.bases:
                for k in args.k:
                    for seed in args.seeds:
                        (xt, yt), (xs, ys) = realdata.task_split(task, k, seed)
                        train = (realdata.corrupt(xt, kind, seed), yt)
                        test = (realdata.corrupt(xs, kind, seed + 1), ys)
                        cells = []
                        for arm in args.arms:
                            start = time.perf_counter()
                            (got,) = realdata.fine_tune_accuracy(
                                name,
                                weights_dir,
                                train,
                                [test],
                                seed,
                                {**common, **ARMS[arm]},
                            )
                            scores[arm].append(got)
                            cells.append(
                                f"{arm} {got:.3f} ({time.perf_counter() - start:.0f}s)"
                            )
                        print(
                            f"{task:8s} {kind:6s} {name:6s} k={k:<3d} seed {seed}  "
                            + "  ".join(cells),
                            flush=True,
                        )
    means = {arm: float(np.mean(v)) for arm, v in scores.items()}
    line = "; ".join(f"{arm} {m:.3f}" for arm, m in means.items())
    bottom = [means[a] for a in ("first block", "first two") if a in means]
    ratio = ""
    if bottom and "top (auto)" in means:
        ratio = (
            f"; best bottom arm / defaults = {max(bottom):.3f} / "
            f"{means['top (auto)']:.3f} = {max(bottom) / means['top (auto)']:.3f}x"
        )
    print(
        f"mean test accuracy over {len(next(iter(scores.values())))} runs: {line}{ratio}"
    )


if __name__ == "__main__":
    main()
