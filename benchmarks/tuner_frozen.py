"""A search over rates at one depth: trials reading one frozen blocks' output,
against each trial computing its own.

Since 2026-12-06 trials that unfreeze the same top blocks on the same data
share the frozen blocks' output (`tltf.tuning.hypermodel.FrozenOutputs`): the
first computes it, the next read it after a check of the first batch. The
baseline is the same `tltf.tune` call with `FrozenOutputs.obtain` put back to
"compute it every trial" in this process. The sides alternate after one
uncounted warm-up of each, each in a new project folder.

The search: `tuner="grid"` over `fine_tune_lr` in `--rates` at
`unfreeze=--depth` (fixed head), `head_epochs=5`, `fine_tune_epochs=5`, on
scikit-learn's digits at 64 px, `--k` images per class for training and 10
per class for validation, as a `load_data` bundle (as in
`benchmarks/tuner_datasets.py`). Base: VGG16 from Keras's ImageNet file in
`--weights-dir` (see `benchmarks/realdata.py`).

Usage:
    .venv/bin/python benchmarks/tuner_frozen.py --weights-dir W [--k 10]
        [--depth 1] [--rates 1e-4 3e-4 1e-3] [--repeats 1]

The last line prints the baseline's time over tltf's (medians of the search's
wall time) and the best validation accuracy of each side.
"""

from __future__ import annotations

import tltf  # noqa: F401  # isort: skip  (first: imports TensorFlow quietly)

import argparse
import statistics
import sys
from pathlib import Path

from tltf.tuning.hypermodel import FrozenOutputs

sys.path.insert(0, str(Path(__file__).resolve().parent))
import stage2_cache  # noqa: E402
import tuner_datasets  # noqa: E402


def baseline():
    """Every trial computes the frozen blocks' output itself."""

    def compute(self, key, split, first_batch, compute, data):
        return compute(), False

    return stage2_cache.patched(FrozenOutputs, "obtain", compute)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--depth", type=int, default=1)
    parser.add_argument("--rates", type=float, nargs="+", default=[1e-4, 3e-4, 1e-3])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--weights-dir", default=None)
    args = parser.parse_args()
    data = tuner_datasets.bundle(args.k)
    times, best = tuner_datasets.alternate(
        lambda folder: tuner_datasets.search(
            "vgg16", args.weights_dir, data, folder, args.depth, list(args.rates)
        ),
        baseline,
        args.repeats,
    )
    medians = {side: statistics.median(v) for side, v in times.items()}
    print(
        f"search seconds (medians), each trial its own frozen output / shared: "
        f"{medians['baseline']:.1f} / {medians['tltf']:.1f} = "
        f"{medians['baseline'] / medians['tltf']:.2f}x (best val accuracy "
        f"{best['baseline']:.3f} / {best['tltf']:.3f})"
    )


if __name__ == "__main__":
    main()
