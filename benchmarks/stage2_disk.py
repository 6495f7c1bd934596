"""Stage 2's frozen-block output over the memory limit: read from disk, against
full passes.

After a cached stage 1, `fine_tune`'s stage 2 computes the output of the blocks
below the unfrozen ones once and trains the top blocks on it
(`benchmarks/stage2_cache.py`). Until 2026-12-06 it did so only while that
output fit in `tltf.cache.MEMORY_LIMIT_BYTES` (2 GiB); past it, every stage-2
step ran the whole base forward again. Now, on a machine without a GPU or TPU
(`tltf.cache.frozen_output_on_disk`), the output goes to a file as the pass
computes it and each epoch reads it back a batch at a time. The baseline is
the same call with `tltf.cache.has_accelerator` answering True in this process:
full passes, as before.

Both sides run with the memory limit at `--limit-mib` (default 0), so that a
benchmark of minutes reaches the disk path: the file is then as large as the
frozen output of the run's images (VGG16 at 64 px, blocks 1 to 4: 32 KiB an
image), and on this machine it stays in the page cache, as a file of a few
GiB would with the memory to spare. The stage-1 features go to disk on both
sides alike. Data, bases and protocol are those of `benchmarks/stage2_cache.py`
(scikit-learn's digits at 64 px, the defaults of `fine_tune`, the sides
alternating after one uncounted warm-up each).

Usage:
    .venv/bin/python benchmarks/stage2_disk.py [--bases vgg16] [--k 10]
        [--repeats 2] [--weights-dir W] [--limit-mib 0]

The last line prints the baseline's time over tltf's (medians of
`fine_tune`'s wall time).
"""

from __future__ import annotations

import tltf  # isort: skip  (first: imports TensorFlow quietly)

import argparse
import sys
from pathlib import Path

import tltf.cache

sys.path.insert(0, str(Path(__file__).resolve().parent))
import stage2_cache  # noqa: E402


def baseline():
    """Over the limit, stage 2 as it was: full forward passes."""
    return stage2_cache.patched(tltf.cache, "has_accelerator", lambda: True)


if __name__ == "__main__":
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument("--limit-mib", type=float, default=0.0)
    known, sys.argv[1:] = options.parse_known_args()
    tltf.cache.MEMORY_LIMIT_BYTES = int(known.limit_mib * 2**20)
    stage2_cache.main(
        baseline=baseline,
        doc=__doc__,
        sides="full passes / frozen output read from disk",
    )
