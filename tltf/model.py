"""Building transfer models: `build_model` puts a base and a head together.

`ModelInfo`/`model_info`/`model_base` (in `tltf.info`) and `load_model`/`as_model`
(in `tltf.saving`) are re-exported here, where they were first documented.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import keras

from tltf._checks import take_renamed
from tltf.bases.base import Base, check_load_kwargs, load_base
from tltf.bases.cut import block_outputs, cut_base, resolve_block
from tltf.compute import policy_scope, rebuild_base, resolve_policy
from tltf.distribute import resolve_strategy
from tltf.errors import BlockMapError, ConfigError, InputShapeError, LeaveOneOutError
from tltf.heads import HeadConfig, build_head, output_units, pool_positions
from tltf.info import ModelInfo, model_base, model_info
from tltf.layers import Preprocessing, rgb_into_gray
from tltf.probe import PROBE_IMAGES, probe_blocks, sample_training_data
from tltf.saving import as_model, load_model

__all__ = [
    "METADATA_VERSION",
    "ModelInfo",
    "as_model",
    "build_model",
    "load_model",
    "model_base",
    "model_info",
]

#: Version of the metadata schema stored in the model's Preprocessing layer.
METADATA_VERSION = 1


def build_model(
    base: str | os.PathLike | keras.Model | Base,
    num_classes: int | None = None,
    *,
    input_shape: tuple | None = None,
    head: HeadConfig | dict | None = None,
    task: str = "multiclass",
    name: str | None = None,
    cut: int | str | None = None,
    data=None,
    strategy=None,
    mixed_precision: bool | str = False,
    **base_kwargs,
) -> keras.Model:
    """Builds a transfer model: preprocessing, then the frozen base, then a head.

    The result is a plain functional `keras.Model` of standard and registered
    layers. It saves to `.keras` and loads with `safe_mode=True`. Its base starts
    frozen (stage 1 of the schedule), and `fine_tune` or `FineTuneSchedule` take it
    from there.

    Args:
        base: A registry name (see `list_bases()`), a saved base folder, a
            `keras.Model`, a model that `build_model` built (its base, as a copy:
            sequential transfer) or a `Base` (see `load_base`).
        num_classes: int or None. Classes for "multiclass" and "multilabel";
            outputs for "regression" (defaults to 1); None, 1 or 2 for "binary".
        input_shape: tuple or None. `(height, width, channels)` of the images the
            model takes, raw RGB in [0, 255]. Defaults to the base's own size.
        head: HeadConfig, dict or None. The head's layout. Defaults to
            `HeadConfig()`: the base's blocks average-pooled and
            standardised, then the output layer (no hidden layer, no dropout).
        task: str. "multiclass", "binary", "multilabel" or "regression".
            Defaults to "multiclass".
        name: str or None. The model's name. Defaults to "tltf_<base>".
        cut: str, int or None. Build on the output of this block instead of the
            base's top: a block name or an index in the base's block map
            (negative counts from the top). The blocks above it are dropped, and
            the model's block map ends at it, so `unfreeze`, `fine_tune` and
            `FineTuneSchedule` count blocks below the cut only. Helps when the
            target task is far from the source; `tltf.probe_blocks` recommends
            a cut. "auto" probes every block on `data` (`tltf.probe_blocks`,
            leave-one-out on the training images, a seeded sample of
            `tltf.probe.PROBE_IMAGES` of a larger set) and cuts where the probe
            recommends, or nowhere. Defaults to None (the whole base).
        data: The training data, for `cut="auto"`: any form `fine_tune` takes
            (arrays, a tf.data.Dataset of (image, label), a `DataBundle`).
            Defaults to None.
        strategy: None, "auto", "mirrored", "multi_worker" or a
            `tf.distribute.Strategy` (see `tltf.distribute.resolve_strategy`).
            The model's variables are created under its scope, and `fine_tune`
            trains under it. A base given as a `keras.Model` built outside the
            scope is rebuilt inside it, with its weights. Defaults to None
            ("auto": MirroredStrategy on several GPUs, else none).
        mixed_precision: bool or str. Build under a mixed dtype policy: True
            picks "mixed_float16" with a GPU, else "mixed_bfloat16" (or name
            one). Layers compute in 16 bits with float32 variables; the head's
            output stays float32; the global policy is left unchanged (see
            `tltf.compute`). Defaults to False.
        **base_kwargs: How to load the base, passed on to `tltf.load_base`:

            - weights: "imagenet", None, or a weights file path (registry
              bases only). Defaults to "imagenet".
            - weights_dir: str or None. Offline folder for ImageNet weight
              files. Defaults to `$TLTF_WEIGHTS_DIR`.
            - block_map: Block map of a custom base (see `load_base`). Called
              `blocks` before; `blocks=` still works, with a
              DeprecationWarning. Defaults to None.
            - preprocessing: str or None. Preprocessing mode of a custom base.
              Defaults to None ("none").
            - Any other keyword is an argument of the Keras constructor (e.g.
              `alpha`); a name that is none of these is a ConfigError naming
              the closest one.

    Returns:
        A compiled-free `keras.Model` whose base is frozen.

    Example:

    >>> model = tltf.build_model("mobilenet_v2", num_classes=5, weights=None,
    ...                          input_shape=(96, 96, 3), alpha=0.35)
    >>> model.save("flowers.keras")
    """
    block_map = take_renamed(
        base_kwargs,
        "blocks",
        "block_map",
        base_kwargs.pop("block_map", None),
        "build_model",
    )
    check_load_kwargs(base_kwargs, build_model, "build_model")
    strategy = resolve_strategy(strategy)
    policy = resolve_policy(mixed_precision)
    with strategy.scope(), policy_scope(policy):
        head = head if isinstance(head, HeadConfig) else HeadConfig.from_dict(head)
        units = output_units(task, num_classes)
        base = load_base(
            base, input_shape=input_shape, block_map=block_map, **base_kwargs
        )
        base = rebuild_base(base, strategy, policy)
        loaded = base
        shape = base.input_shape
        grayscale = False
        if input_shape is not None and base.spec is None:
            given = tuple(input_shape)
            grayscale = _rgb_for_gray(shape, given, base)
            if len(given) != len(shape) or any(
                b not in (None, g)
                for b, g in zip(shape[:-1] if grayscale else shape, given, strict=False)
            ):
                raise InputShapeError(
                    f"Base {base.name!r} takes inputs of shape {shape}. Received: "
                    f"input_shape={given}. Resize the images, or build the base for "
                    "that shape."
                )
            if grayscale:
                print(
                    f"tltf: note: base {base.name!r} takes grayscale images: the "
                    "model takes RGB images and turns them into one gray channel "
                    "(ITU-R BT.601 luma) before its preprocessing."
                )
            shape = given
        cut_record = None
        if isinstance(cut, str) and cut == "auto":
            cut = _auto_cut(base, data, shape, task)
        elif data is not None:
            raise ConfigError(
                "build_model(data=...) is only used with cut='auto'. Received: "
                f"cut={cut!r}. Pass cut='auto', or drop data."
            )
        if cut is not None:
            base, cut_record = cut_base(base, cut)
        metadata = {
            "version": METADATA_VERSION,
            "base": base.name,
            "base_layer": base.model.name,
            "blocks": base.block_map.to_config(),
            "task": task,
            "num_outputs": units,
            "head": dataclasses.asdict(head),
            "base_info": _scalar_items(base.info),
        }
        if cut_record is not None:
            metadata["cut"] = cut_record
        base, pooled = _multi_output(base, head)
        metadata["head_blocks"] = pooled
        inputs = keras.Input(shape=shape, name="image")
        x = Preprocessing(
            base.preprocessing,
            metadata=metadata,
            grayscale=grayscale,
            name="preprocessing",
        )(inputs)
        x = base.model(x)
        outputs = build_head(x, task, units, head, images=inputs)
        model = keras.Model(inputs, outputs, name=name or f"tltf_{base.name}")
        base.model.trainable = False
        # The head may read a cut or multi-output model over the same layers: the
        # base as loaded says it is frozen too, so `trainable = True` thaws it.
        loaded.model.trainable = False
        return model


def _rgb_for_gray(shape: tuple, given: tuple, base: Base) -> bool:
    """Whether RGB images (`given`) go into a base that takes gray ones (`shape`).

    The model then converts them to one gray channel before its preprocessing.
    """
    if not rgb_into_gray(shape, given):
        return False
    if base.preprocessing in ("caffe", "torch"):
        raise ConfigError(
            f"Base {base.name!r} takes 1-channel (grayscale) images, but "
            f"preprocessing={base.preprocessing!r} normalises three RGB channels. "
            "Pass preprocessing='tf' (scale to [-1, 1]) or 'none', as the base "
            "was trained."
        )
    return True


#: The ranks of block outputs a head reads beside others: (batch, h, w, c) maps,
#: pooled, and (batch, features) vectors, as they are.
_READABLE = (2, 4)


def _multi_output(base: Base, head: HeadConfig) -> tuple[Base, list[str]]:
    """The base with one output per block the head reads (`head.pool_from`).

    Returns the base unchanged, with its top block only, for `pool_from="top"`,
    for bases whose output is neither a feature map nor a vector, and when no
    block below the top can be read. A base that ends in a vector (an embedding,
    logits, VGG's fully connected layers) has its feature maps below read too.
    """
    names = base.block_map.names
    if head.pool_from == "top" or len(base.model.output_shape) not in _READABLE:
        return base, [names[-1]]
    if head.pool_from == "auto":
        # One walk of the graph finds every block's output; unreadable ones are None.
        try:
            tensors = block_outputs(
                base.model, base.block_map, range(len(names)), strict=False
            )
        except BlockMapError:
            return base, [names[-1]]
        widths = [
            int(t.shape[-1]) if t is not None and len(t.shape) in _READABLE else None
            for t in tensors
        ]
        positions = pool_positions(len(names), "auto", widths=widths)
        outputs = [tensors[p] for p in positions]
    else:
        positions = pool_positions(
            len(names),
            head.pool_from,
            lambda b: resolve_block(base.block_map, b, "pool_from"),
        )
        outputs = block_outputs(base.model, base.block_map, positions)
    if len(positions) == 1 or any(len(t.shape) not in _READABLE for t in outputs):
        return base, [names[-1]]
    model = keras.Model(base.model.inputs[0], outputs, name=base.model.name)
    return dataclasses.replace(base, model=model), [names[p] for p in positions]


def _auto_cut(base: Base, data, shape, task: str) -> str | None:
    """The cut `probe_blocks` recommends for `data` (leave-one-out), or None."""
    if data is None:
        raise ConfigError(
            "cut='auto' needs the training data to probe the blocks on: "
            "build_model(base, num_classes, cut='auto', data=train)."
        )
    probed = Base(
        model=base.model,
        name=base.name,
        block_map=base.block_map,
        preprocessing=base.preprocessing,
        spec=base.spec,
        info=base.info,
    )
    try:
        train, validation, sampled_from = sample_training_data(
            data, PROBE_IMAGES, seed=0, task=task
        )
        result = probe_blocks(
            probed, train, validation, input_shape=tuple(shape), task=task, verbose=0
        )
    except LeaveOneOutError:
        print(
            "tltf: cut='auto' -> None (the whole base): every class has one "
            "training image, so leave-one-out cannot score the blocks."
        )
        return None
    top, key = result.table[-1], result.key
    if result.cut is None:
        why = f"the top block is as good as any: {top[key]:.3f}"
    else:
        why = f"{result.best['block']} {result.best[key]:.3f}, top {top[key]:.3f}"
    sample = (
        f", on a seeded sample of {result.num_train:,} of {sampled_from:,} "
        "training images"
        if sampled_from
        else ""
    )
    print(
        f"tltf: cut='auto' -> {result.cut!r} (leave-one-out {result.measure} of a linear "
        f"probe: {why}{sample})."
    )
    return result.cut


def _scalar_items(info: dict[str, Any]) -> dict[str, Any]:
    return {
        k: v
        for k, v in info.items()
        if isinstance(v, (str, int, float, bool, type(None)))
    }
