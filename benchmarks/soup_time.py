"""A greedy soup's seconds against scoring each ingredient on its own model.

`tltf.soup` scores every ingredient and every average on one model, its weights
set each time, so its prediction step is traced once. Before, it scored each
ingredient on the ingredient's own model (a trace each), then the averages on a
rebuilt model. This benchmark times, in one process and alternating which runs
first: "soup", `tltf.soup` of copies of the models; "per model", `tltf.evaluate`
of each copy on the same data (the part the soup no longer does: its scores
alone, with one trace per ingredient). Fresh copies (`tltf.interpolate(m, m,
0.0)`) every run, so no run reuses another's traces.

Models: `build_model("demo", 12)` from seeds 0, 1, 2 (untrained heads: the cost
is the same), 10 `shapes_target` images per class at 64 px.

Usage:
    .venv/bin/python benchmarks/soup_time.py [--models 3] [--repeats 2]

The last line prints the mean seconds of the soup over those of scoring each
ingredient on its own model.
"""

from __future__ import annotations

import tltf  # isort: skip  (first: imports TensorFlow quietly)

import argparse
import time

import keras


def _copies(models):
    return [tltf.interpolate(m, m, 0.0) for m in models]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    data = tltf.datasets.make_images(
        "shapes_target", per_class=10, image_size=64, seed=1
    )
    models = []
    for seed in range(args.models):
        keras.utils.set_random_seed(seed)
        models.append(tltf.build_model("demo", 12))

    def soup():
        result = tltf.soup(_copies(models), data, verbose=0)
        return f"kept {result.kept}, score {result.score:.3f}"

    def per_model():
        scores = [tltf.evaluate(m, data).accuracy for m in _copies(models)]
        return "scores " + ", ".join(f"{s:.3f}" for s in scores)

    arms = {"soup": soup, "per model": per_model}
    seconds = {name: [] for name in arms}
    for repeat in range(args.repeats):
        order = list(arms) if repeat % 2 == 0 else list(reversed(arms))
        for name in order:
            start = time.perf_counter()
            what = arms[name]()
            seconds[name].append(time.perf_counter() - start)
            print(f"repeat {repeat}, {name}: {seconds[name][-1]:.2f} s ({what})")
    mean = {name: sum(s) / len(s) for name, s in seconds.items()}
    print(
        f"soup of {args.models} models / scoring each on its own model: "
        f"{mean['soup']:.2f}s / {mean['per model']:.2f}s = "
        f"{mean['soup'] / mean['per model']:.2f}x"
    )


if __name__ == "__main__":
    main()
