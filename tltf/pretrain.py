"""Pretraining a registry architecture on a procedural source task.

`pretrain` trains a Keras Applications architecture from scratch (random weights,
no ImageNet download) with a small softmax head on one of `tltf.datasets`'
procedural tasks, then saves the headless base as a tltf base folder (see
`tltf.save_base`), ready for `tltf.build_model(path, num_classes)`.
`default_demo_base` does this once for the demo's base and caches the result.

Bases live in a store: `$TLTF_HOME/bases` when `TLTF_HOME` is set, otherwise
`~/.cache/tltf/bases`. A base's folder name spells out how it was trained, so two
different recipes never overwrite each other.

Two things make training from scratch work on a small budget:

- BatchNorm momentum. Keras's default (0.99) lets the moving statistics lag far
  behind the weights over a few hundred steps, so a net that fits the training
  data can score chance in inference mode. `pretrain` sets every BatchNormalization
  layer to `bn_momentum` (0.9); the saved base keeps that momentum.
- A warmup + cosine learning-rate schedule (Adam), so a high peak rate is safe.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
from numbers import Real
from pathlib import Path
from typing import Any

import keras
import numpy as np

from tltf import datasets
from tltf._version import __version__
from tltf.bases.base import (
    Base,
    check_base_path,
    check_constructor_kwargs,
    load_base,
    load_saved_base,
    read_base_record,
    save_base,
)
from tltf.bases.registry import get_spec
from tltf.cache import build_metrics, build_optimizer
from tltf.errors import ConfigError, ModelError
from tltf.heads import HeadConfig
from tltf.model import build_model

#: Environment variable naming tltf's home folder (the store is `<home>/bases`).
HOME_ENV = "TLTF_HOME"

#: Share of `images` generated again, with another seed, as the validation set.
VALIDATION_FRACTION = 0.1

#: Below this multiple of chance accuracy, `pretrain` says the base learned little.
NEAR_CHANCE = 2.0

#: Offset between the training seed and the validation seed of a task.
_VALIDATION_SEED_OFFSET = 7919


@dataclasses.dataclass(frozen=True)
class PretrainConfig:
    """A pretraining recipe: every argument of `pretrain` that shapes the base.

    Attributes:
        architecture: str. A registry name (see `tltf.list_bases()`).
        task: str. A `tltf.datasets` task.
        images: int. Training images (classes balanced).
        image_size: int. Input height and width in pixels.
        epochs: int. Training epochs.
        batch_size: int. Batch size.
        bn_momentum: float. Momentum of every BatchNormalization layer.
        learning_rate: float. Peak learning rate (after warmup).
        seed: int. Seed of the data and of the weights.
        constructor_kwargs: tuple of (key, value) pairs for the constructor,
            such as `(("alpha", 0.25),)`.
    """

    architecture: str = "mobilenet_v3_small"
    task: str = datasets.SOURCE_TASK
    images: int = 12000
    image_size: int = 64
    epochs: int = 5
    batch_size: int = 32
    bn_momentum: float = 0.9
    learning_rate: float = 3e-3
    seed: int = 0
    constructor_kwargs: tuple = ()

    @property
    def name(self) -> str:
        """The base's folder name in the store.

        For example `mobilenet-alpha0.25-32px-shapes_source-256x1-s0-1a2b3c`: the
        architecture, constructor arguments, size, task, images x epochs and seed,
        then a hash of the whole recipe (so that any change gives a new name).
        """
        kwargs = "".join(f"-{key}{value}" for key, value in self.constructor_kwargs)
        recipe = json.dumps(dataclasses.asdict(self), sort_keys=True, default=str)
        digest = hashlib.sha1(recipe.encode()).hexdigest()[:6]
        return (
            f"{self.architecture}{kwargs}-{self.image_size}px-{self.task}-"
            f"{self.images}x{self.epochs}-s{self.seed}-{digest}"
        )

    def kwargs(self) -> dict[str, Any]:
        """The config as keyword arguments of `pretrain`."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        constructor_kwargs = dict(fields.pop("constructor_kwargs"))
        return {**fields, **constructor_kwargs}


#: The demo's base: MobileNetV3Small at 64 px, 12,000 source images, 5 epochs.
#: Chosen by measurement on 2 CPU cores (see `default_demo_base`).
DEMO_BASE = PretrainConfig()

#: A tiny base for tests and `run_demo(quick=True)`: MobileNet v1 (alpha 0.25) at
#: 32 px, one epoch on 256 images. It learns little, but builds and traces fast.
QUICK_BASE = PretrainConfig(
    architecture="mobilenet",
    images=256,
    image_size=32,
    epochs=1,
    constructor_kwargs=(("alpha", 0.25),),
)


#: The head trained with the base, then discarded: the top block, average pooling
#: and one softmax layer, spelled out so that `build_model`'s default head (which
#: reads several blocks through another model) never changes what is trained.
PRETRAIN_HEAD = HeadConfig(
    pooling="avg",
    hidden_units=(),
    dropout=0.0,
    standardize=False,
    pool_from="top",
    pixels=0,
)


def store_dir() -> Path:
    """The folder where tltf keeps pretrained bases.

    Returns:
        `$TLTF_HOME/bases` when `TLTF_HOME` is set, otherwise
        `~/.cache/tltf/bases`. The folder may not exist yet.
    """
    home = os.environ.get(HOME_ENV)
    root = Path(home).expanduser() if home else Path("~/.cache/tltf").expanduser()
    return root / "bases"


def stored_bases() -> list[tuple[Path, dict]]:
    """The saved bases in the store (`store_dir`), by name: (folder, their info).

    A folder without a readable `base.json` record (an interrupted write, a
    stray folder) is skipped.
    """
    found = []
    folder = store_dir()
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        record = read_base_record(path)
        if record is not None:
            info = record.get("info")
            found.append((path, info if isinstance(info, dict) else {}))
    return found


def _check_int(value, name: str, minimum: int) -> int:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, np.integer))
        or value < minimum
    ):
        raise ConfigError(
            f"Expected {name} to be an integer >= {minimum}. Received: {name}={value!r}"
        )
    return int(value)


def _check_float(value, name: str, low: float, high: float) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, Real)
        or not (math.isfinite(value) and low < value < high)
    ):
        raise ConfigError(
            f"Expected {name} in ({low:g}, {high:g}). Received: {name}={value!r}"
        )
    return float(value)


def set_bn_momentum(model: keras.Model, momentum: float) -> int:
    """Sets the momentum of every BatchNormalization layer in a model.

    Args:
        model: keras.Model. The model; nested models are searched too.
        momentum: float. The new momentum, in (0, 1).

    Returns:
        The number of BatchNormalization layers changed.
    """
    momentum = _check_float(momentum, "bn_momentum", 0.0, 1.0)
    count = 0
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = momentum
            count += 1
    return count


def warmup_cosine(
    peak: float, total_steps: int, warmup_fraction: float = 0.1
) -> keras.optimizers.schedules.LearningRateSchedule:
    """A linear warmup to `peak`, then a cosine decay to zero.

    Args:
        peak: float. The learning rate at the end of the warmup.
        total_steps: int. Optimizer steps of the whole run.
        warmup_fraction: float. Share of the steps spent warming up. Defaults
            to 0.1.

    Returns:
        A `keras.optimizers.schedules.CosineDecay`.
    """
    warmup = max(1, int(total_steps * warmup_fraction))
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=peak / 20,
        decay_steps=max(1, total_steps - warmup),
        warmup_target=peak,
        warmup_steps=warmup,
    )


def pretrain(
    architecture: str = DEMO_BASE.architecture,
    *,
    task: str = DEMO_BASE.task,
    images: int = DEMO_BASE.images,
    image_size: int = DEMO_BASE.image_size,
    epochs: int = DEMO_BASE.epochs,
    batch_size: int = DEMO_BASE.batch_size,
    bn_momentum: float = DEMO_BASE.bn_momentum,
    learning_rate: float = DEMO_BASE.learning_rate,
    seed: int = DEMO_BASE.seed,
    save_to: str | os.PathLike | None = None,
    verbose: int = 1,
    **constructor_kwargs,
) -> Base:
    """Pretrains an architecture from scratch on a procedural task and saves its base.

    The architecture is built with random weights and without its top, followed by
    global average pooling and a softmax Dense layer (the head is discarded). It
    trains with Adam on a warmup + cosine schedule; every BatchNormalization layer
    gets `bn_momentum`. A validation set of `images / 10` images is generated with
    another seed. The headless base is then saved with `tltf.save_base` (an atomic
    write), together with where it came from.

    Seeds Python, NumPy and TensorFlow (`keras.utils.set_random_seed(seed)`).

    Args:
        architecture: str. A registry name (see `tltf.list_bases()`). Defaults to
            "mobilenet_v3_small".
        task: str. A `tltf.datasets` task. Defaults to "shapes_source".
        images: int. Training images, balanced over the classes. Defaults to 12000.
        image_size: int. Input height and width in pixels (at least the
            architecture's minimum, 32 for most). Defaults to 64.
        epochs: int. Training epochs. Defaults to 5.
        batch_size: int. Batch size. Defaults to 32.
        bn_momentum: float. BatchNorm momentum, in (0, 1). Defaults to 0.9.
        learning_rate: float. Peak learning rate. Defaults to 3e-3.
        seed: int. Seed of the data and the initial weights. Defaults to 0.
        save_to: str, PathLike or None. The base folder to write. Defaults to
            `store_dir() / <name>`, where the name spells out the recipe.
        verbose: int. 0 is silent, 1 shows Keras progress bars, 2 one line per
            epoch; 1 and 2 also print a one-line summary. Defaults to 1.
        **constructor_kwargs: Keras constructor arguments, such as `alpha=0.25`.

    Returns:
        The trained `Base` (frozen); `info` holds the recipe and the final
        accuracies, and `info["path"]` the saved folder, which
        `tltf.build_model(path, num_classes)` and `tltf.load_base(path)` accept.

    Raises:
        ConfigError: for an unknown architecture or task, an invalid number, or a
            `save_to` that holds a file or a folder tltf did not write (all
            checked before training).

    Example:

    >>> from tltf.pretrain import pretrain
    >>> base = pretrain(verbose=0)  # MobileNetV3Small, 64 px: ~4 min on 2 cores
    >>> base.info["val_accuracy"]
    0.8433
    >>> model = tltf.build_model(base.info["path"], num_classes=12)
    """
    spec = get_spec(architecture)
    check_constructor_kwargs(spec, constructor_kwargs)
    if task not in datasets.TASKS:
        raise ConfigError(
            f"Unknown task {task!r}. Expected one of {list(datasets.TASKS)}."
        )
    images = _check_int(images, "images", 2)
    image_size = _check_int(image_size, "image_size", 1)
    if image_size < max(spec.min_size, datasets.MIN_IMAGE_SIZE):
        minimum = max(spec.min_size, datasets.MIN_IMAGE_SIZE)
        raise ConfigError(
            f"{spec.name} needs images of at least {minimum} px. Received: "
            f"image_size={image_size}. Use image_size={minimum} or more."
        )
    epochs = _check_int(epochs, "epochs", 1)
    batch_size = _check_int(batch_size, "batch_size", 1)
    learning_rate = _check_float(learning_rate, "learning_rate", 0.0, 10.0)
    bn_momentum = _check_float(bn_momentum, "bn_momentum", 0.0, 1.0)
    seed = _check_int(seed, "seed", 0)
    config = PretrainConfig(
        spec.name,
        task,
        images,
        image_size,
        epochs,
        batch_size,
        bn_momentum,
        learning_rate,
        seed,
        tuple(sorted(constructor_kwargs.items())),
    )
    path = (
        Path(save_to).expanduser() if save_to is not None else store_dir() / config.name
    )
    check_base_path(path)  # minutes of training must not end in a refusal

    classes = datasets.num_classes(task)
    val_images = max(classes, round(images * VALIDATION_FRACTION))
    x_train, y_train = datasets.make_images(
        task, n=images, image_size=image_size, seed=seed
    )
    x_val, y_val = datasets.make_images(
        task, n=val_images, image_size=image_size, seed=seed + _VALIDATION_SEED_OFFSET
    )

    keras.utils.set_random_seed(seed)
    base = load_base(
        spec.name,
        weights=None,
        input_shape=(image_size, image_size, 3),
        **constructor_kwargs,
    )
    set_bn_momentum(base.model, bn_momentum)
    model = build_model(base, classes, head=PRETRAIN_HEAD, name=f"pretrain_{spec.name}")
    base.model.trainable = True  # build_model froze it
    steps = epochs * math.ceil(images / batch_size)
    model.compile(
        optimizer=keras.optimizers.Adam(warmup_cosine(learning_rate, steps)),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    build_metrics(model, y_train)  # traced once, not twice (tltf.cache)
    build_optimizer(model)
    if verbose:
        print(
            f"tltf: pretraining {config.name}: {spec.name} "
            f"{_format_kwargs(constructor_kwargs)}from scratch on {task} "
            f"({images} images, {classes} classes, {image_size} px), {epochs} "
            f"epoch{'s' if epochs != 1 else ''}."
        )
    start = time.perf_counter()
    history = model.fit(
        x_train,
        y_train,
        batch_size=batch_size,
        epochs=epochs,
        validation_data=(x_val, y_val),
        shuffle=True,
        verbose=verbose,
    )
    seconds = time.perf_counter() - start
    train_accuracy = float(history.history["accuracy"][-1])
    val_accuracy = float(history.history["val_accuracy"][-1])
    if not (
        math.isfinite(train_accuracy) and math.isfinite(history.history["loss"][-1])
    ):
        raise ModelError(
            f"Pretraining {config.name} diverged (loss {history.history['loss'][-1]}). "
            "Lower learning_rate."
        )

    info = {
        "weights": f"pretrained on {task}",
        "pretrained": True,
        "architecture": spec.name,
        "task": task,
        "classes": classes,
        "images": images,
        "val_images": val_images,
        "image_size": image_size,
        "epochs": epochs,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "bn_momentum": bn_momentum,
        "seed": seed,
        "constructor_kwargs": dict(constructor_kwargs),
        "train_accuracy": round(train_accuracy, 4),
        "val_accuracy": round(val_accuracy, 4),
        "train_seconds": round(seconds, 1),
        "tltf_version": __version__,
    }
    save_base(base, path, info=info)
    if verbose:
        print(
            f"tltf: pretrained in {seconds:.0f} s: train accuracy {train_accuracy:.3f}, "
            f"val accuracy {val_accuracy:.3f}; saved to {path}"
        )
        note = near_chance_note(val_accuracy, classes)
        if note:
            print(note)
    base.model.trainable = False
    base.info = {"min_size": base.min_size, **base.info, **info, "path": str(path)}
    return base


def near_chance_note(val_accuracy: float, classes: int) -> str | None:
    """The line `pretrain` prints when its base learned little, else None."""
    chance = 1.0 / classes
    if val_accuracy >= NEAR_CHANCE * chance:
        return None
    return (
        f"tltf: note: the val accuracy {val_accuracy:.3f} is near chance ({chance:.3f} "
        f"on {classes} classes), so this base may transfer no better than random "
        "weights. Train longer (more epochs or images) or at another learning "
        "rate; the defaults are MobileNetV3Small's recipe."
    )


def _format_kwargs(kwargs: dict) -> str:
    return "".join(f"({k}={v}) " for k, v in sorted(kwargs.items()))


#: The demo base shipped with tltf (`DEMO_BASE`, 4.3 MB). Reproduce it with
#: `make demo-base` (`python -m tltf.pretrain --asset`).
ASSETS_DIR = Path(__file__).resolve().parent / "assets"


def demo_base_path(quick: bool = False) -> Path:
    """The store folder of the demo's base (it may not exist yet)."""
    return store_dir() / (QUICK_BASE if quick else DEMO_BASE).name


def shipped_demo_base_path() -> Path:
    """Where the demo base shipped inside the package lies (it may be absent)."""
    return ASSETS_DIR / DEMO_BASE.name


def has_demo_base() -> bool:
    """Whether the demo base is available without pretraining (store or package)."""
    return demo_base_path().exists() or shipped_demo_base_path().exists()


def default_demo_base(verbose: int = 1, *, quick: bool = False) -> Base:
    """Returns the demo's pretrained base, pretraining and caching it on first use.

    The base is `DEMO_BASE`: MobileNetV3Small trained from scratch at 64 px on
    12,000 `shapes_source` images for 5 epochs (batch 32, Adam with warmup and
    cosine decay to a 3e-3 peak, BatchNorm momentum 0.9). On 2 CPU cores this
    took 3.5 to 4.5 minutes and reached 0.84 validation accuracy on the 16 source
    classes (0.89 train). tltf ships this base (`shipped_demo_base_path`, made by
    `python -m tltf.pretrain --asset`), so it is pretrained only where the
    package copy is missing; a base in the store takes precedence. Smaller MobileNets learned the source task far slower
    from scratch: MobileNet v1 (alpha 0.25, 48 px) and MobileNetV2 (alpha 0.35,
    48 px) stayed below 0.15 validation accuracy on the same budget. The base is
    saved in the store (see `store_dir`) and loaded from there afterwards.

    Args:
        verbose: int. Verbosity of the pretraining, if it runs (see `pretrain`).
            Defaults to 1.
        quick: bool. Use the tiny `QUICK_BASE` instead (for tests). Defaults to
            False.

    Returns:
        The `Base`, loaded from the store.

    Example:

    >>> from tltf.pretrain import default_demo_base
    >>> base = default_demo_base()
    >>> model = tltf.build_model(base, num_classes=12)
    """
    config = QUICK_BASE if quick else DEMO_BASE
    path = store_dir() / config.name
    if not quick and not path.exists() and shipped_demo_base_path().exists():
        # The copy shipped with tltf, pretrained with exactly this config.
        return load_saved_base(shipped_demo_base_path())
    if path.exists():
        try:
            return load_saved_base(path)
        except ModelError as error:
            if verbose:
                print(f"tltf: cached base is unusable ({error}); pretraining it again.")
    elif verbose:
        print(
            f"tltf: no cached base at {path}; pretraining it once"
            f"{'' if quick else ' (about 4 minutes on 2 CPU cores)'}."
        )
    pretrain(**config.kwargs(), save_to=path, verbose=verbose)
    return load_saved_base(path)


def _main(argv=None) -> int:
    """`python -m tltf.pretrain --asset`: pretrains the shipped demo base again."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m tltf.pretrain",
        description="Pretrains the demo base (DEMO_BASE) from scratch.",
    )
    parser.add_argument(
        "--asset",
        action="store_true",
        help=f"write it into the package ({shipped_demo_base_path()}) instead of "
        "the base store",
    )
    args = parser.parse_args(argv)
    target = shipped_demo_base_path() if args.asset else demo_base_path()
    pretrain(**DEMO_BASE.kwargs(), save_to=target)
    print(f"tltf: wrote {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
