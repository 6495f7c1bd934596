"""TensorFlow as the test processes run it: lean, for tiny models.

The pytest workers and the child processes they start (tests/processes.py: a
killed run resumed, the command line, the notebooks' kernels, a chief and its
workers) import this module before anything else. It turns off oneDNN's custom
kernels and Grappler's graph optimizations. The suite's models (8 to 64 px, a
few thousand to a few million weights) spend their time tracing and optimizing
graphs, not computing them; on real images both pay off, and users keep them.
Measured on test_defaults, test_cache and test_guard in one process (wall time,
the mean of two runs): 166.8 s with TensorFlow's defaults, 153.2 s without
oneDNN's kernels, 154.9 s without Grappler; the whole suite in
benchmarks/RESULTS.md, "Test suite".

Every process that the suite compares bit for bit (a killed run and the run it
resumes to) runs with the same settings. A fresh interpreter (`subprocess`, the
tests of what `import tltf` prints) runs TensorFlow as a user's does: the
variable is set only while TensorFlow is imported, which reads it once, and
tests/test_processes.py trains, saves and loads a model in one.
"""

from __future__ import annotations

import os

#: Whether this module turned oneDNN off (a variable the user set is kept).
ONEDNN_OFF = "TF_ENABLE_ONEDNN_OPTS" not in os.environ
if ONEDNN_OFF:
    os.environ["TF_ENABLE_ONEDNN_OPTS"] = "0"

import tltf  # noqa: E402,F401,I001  (first: imports TensorFlow quietly)

if ONEDNN_OFF:
    del os.environ["TF_ENABLE_ONEDNN_OPTS"]

import tensorflow as tf  # noqa: E402

tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})
