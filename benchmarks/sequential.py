"""Sequential transfer: a model tltf fine-tuned is the base of the next task.

The target is small: the digits 0-9 rendered in matplotlib's fonts, k images
per class. Two ways to start it, both with `fine_tune`'s defaults:

- from the demo base (pretrained on procedural shapes only);
- from the same base after tltf fine-tuned it on a larger related task first,
  the 26 uppercase letters in the same fonts (`--source-k` images each), handed
  over as `tltf.build_model(letters_model, 10)`: the letters model's base,
  copied with its fine-tuned weights.

The difference is what the letters task adds to the base. Test: 30 digits per
class, disjoint from the training digits. Each line also says how many of the
base's weight tensors the letters run changed (none if its guard kept stage 1,
which trains the head alone).

Usage:
    .venv/bin/python benchmarks/sequential.py [--k 5] [--source-k 30] [--seeds 0 1 2]

The last line prints the mean test accuracy from the letters model's base over
the one from the demo base.
"""

from __future__ import annotations

import tltf  # isort: skip  (first: imports TensorFlow quietly)

import argparse
import time

import keras
import numpy as np
import realdata

DIGITS = "0123456789"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--source-k", type=int, default=30)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--source-unfreeze",
        default=None,
        help="unfreeze= of the letters run, with keep_best=False so that its "
        "stage 2 is kept (default: fine_tune's defaults)",
    )
    args = parser.parse_args()
    source = {}
    if args.source_unfreeze is not None:
        unfreeze = args.source_unfreeze
        source = {
            "unfreeze": unfreeze if unfreeze in ("all", "auto") else int(unfreeze),
            "keep_best": False,
        }

    # Renderer seeds: letters for the source task, digits for train and test.
    letters_x, letters_y = realdata.font_chars(chars=realdata.LETTERS, per_class=60)
    digits_x, digits_y = realdata.font_chars(chars=DIGITS, per_class=80, seed=1)
    rows = []
    for seed in args.seeds:
        start = time.perf_counter()
        (sx, sy), _ = realdata.few_shot(letters_x, letters_y, args.source_k, seed)
        train, test = realdata.few_shot(digits_x, digits_y, args.k, seed, 30)

        keras.utils.set_random_seed(seed)
        direct = tltf.build_model("demo", 10)
        tltf.fine_tune(direct, train, seed=seed, verbose=0)

        keras.utils.set_random_seed(seed)
        letters = tltf.build_model("demo", 26)
        before = [w.numpy() for w in tltf.model_info(letters).base.weights]
        tltf.fine_tune(letters, (sx, sy), seed=seed, verbose=0, **source)
        after = [w.numpy() for w in tltf.model_info(letters).base.weights]
        changed = sum(
            not np.array_equal(a, b) for a, b in zip(before, after, strict=True)
        )
        keras.utils.set_random_seed(seed)
        second = tltf.build_model(letters, 10)  # the letters model's base
        tltf.fine_tune(second, train, seed=seed, verbose=0)

        row = {
            "demo": realdata.accuracy(direct, *test),
            "letters": realdata.accuracy(second, *test),
        }
        rows.append(row)
        print(
            f"seed {seed}: demo base {row['demo']:.3f}, letters model's base "
            f"{row['letters']:.3f} (the letters run changed {changed} "
            f"of {len(before)} base weights; {time.perf_counter() - start:.0f}s)",
            flush=True,
        )
    ours = np.mean([r["letters"] for r in rows])
    theirs = np.mean([r["demo"] for r in rows])
    print(
        f"mean test accuracy on font digits at k={args.k}, letters model's base / "
        f"demo base: {ours:.3f} / {theirs:.3f} = {ours / theirs:.2f}x"
    )


if __name__ == "__main__":
    main()
