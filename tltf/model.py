"""Building transfer models, finding their parts, and loading them safely."""

from __future__ import annotations

import dataclasses
import os
import re
import zipfile
from pathlib import Path
from typing import Any

import keras

# Keras has no public form of this scope; `keras.saving.load_model(safe_mode=True)`
# alone is overridden by Keras's process-wide unsafe-deserialization switch.
from keras.src.saving.serialization_lib import SafeModeScope

from tltf.bases.base import Base, load_base
from tltf.bases.blockmaps import BlockMap
from tltf.errors import BlockMapError, ConfigError, InputShapeError, ModelError
from tltf.heads import HeadConfig, build_head, output_units
from tltf.layers import Preprocessing

#: Version of the metadata schema stored in the model's Preprocessing layer.
METADATA_VERSION = 1


def build_model(
    base: str | os.PathLike | keras.Model | Base,
    num_classes: int | None = None,
    *,
    input_shape: tuple | None = None,
    weights: str | os.PathLike | None = "imagenet",
    head: HeadConfig | dict | None = None,
    task: str = "multiclass",
    weights_dir: str | os.PathLike | None = None,
    blocks=None,
    preprocessing: str | None = None,
    name: str | None = None,
    cut: int | str | None = None,
    data=None,
    strategy=None,
    mixed_precision: bool | str = False,
    **constructor_kwargs,
) -> keras.Model:
    """Builds a transfer model: preprocessing, then the frozen base, then a head.

    The result is a plain functional `keras.Model` of standard and registered
    layers. It saves to `.keras` and loads with `safe_mode=True`. Its base starts
    frozen (stage 1 of the schedule), and `fine_tune` or `FineTuneSchedule` take it
    from there.

    Args:
        base: A registry name (see `list_bases()`), a saved base folder, a
            `keras.Model` or a `Base` (see `load_base`).
        num_classes: int or None. Classes for "multiclass" and "multilabel";
            outputs for "regression" (defaults to 1); None, 1 or 2 for "binary".
        input_shape: tuple or None. `(height, width, channels)` of the images the
            model takes, raw RGB in [0, 255]. Defaults to the base's own size.
        weights: "imagenet", None, or a weights file path (registry bases only).
            Defaults to "imagenet".
        head: HeadConfig, dict or None. The head's layout. Defaults to
            `HeadConfig()`: average pooling, dropout 0.2, the output layer.
        task: str. "multiclass", "binary", "multilabel" or "regression".
            Defaults to "multiclass".
        weights_dir: str or None. Offline folder for ImageNet weight files.
            Defaults to `$TLTF_WEIGHTS_DIR`.
        blocks: Block map of a custom base (see `load_base`). Defaults to None.
        preprocessing: str or None. Preprocessing mode of a custom base.
        name: str or None. The model's name. Defaults to "tltf_<base>".
        cut: str, int or None. Build on the output of this block instead of the
            base's top: a block name or an index in the base's block map
            (negative counts from the top). The blocks above it are dropped, and
            the model's block map ends at it, so `unfreeze`, `fine_tune` and
            `FineTuneSchedule` count blocks below the cut only. Helps when the
            target task is far from the source; `tltf.probe_blocks` recommends
            a cut. "auto" probes every block on `data` (`tltf.probe_blocks`,
            leave-one-out on the training images) and cuts where the probe
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
        **constructor_kwargs: Extra Keras constructor arguments (e.g. `alpha`).

    Returns:
        A compiled-free `keras.Model` whose base is frozen.

    Example:

    >>> model = tltf.build_model("mobilenet_v2", num_classes=5, weights=None,
    ...                          input_shape=(96, 96, 3), alpha=0.35)
    >>> model.save("flowers.keras")
    """
    from tltf.compute import policy_scope, rebuild_base, resolve_policy
    from tltf.distribute import resolve_strategy

    strategy = resolve_strategy(strategy)
    policy = resolve_policy(mixed_precision)
    with strategy.scope(), policy_scope(policy):
        head = head if isinstance(head, HeadConfig) else HeadConfig.from_dict(head)
        units = output_units(task, num_classes)
        base = load_base(
            base,
            weights=weights,
            input_shape=input_shape,
            weights_dir=weights_dir,
            blocks=blocks,
            preprocessing=preprocessing,
            **constructor_kwargs,
        )
        base = rebuild_base(base, strategy, policy)
        shape = base.input_shape
        if input_shape is not None and base.spec is None:
            given = tuple(input_shape)
            if len(given) != len(shape) or any(
                b not in (None, g) for b, g in zip(shape, given, strict=False)
            ):
                raise InputShapeError(
                    f"Base {base.name!r} takes inputs of shape {shape}. Received: "
                    f"input_shape={given}. Resize the images, or build the base for "
                    "that shape."
                )
            shape = given
        cut_record = None
        if isinstance(cut, str) and cut == "auto":
            cut = _auto_cut(base, data, shape)
        elif data is not None:
            raise ConfigError(
                "build_model(data=...) is only used with cut='auto'. Received: "
                f"cut={cut!r}. Pass cut='auto', or drop data."
            )
        if cut is not None:
            from tltf.bases.cut import cut_base

            base, cut_record = cut_base(base, cut)
        metadata = {
            "version": METADATA_VERSION,
            "base": base.name,
            "base_layer": base.model.name,
            "blocks": base.block_map.to_config(),
            "task": task,
            "num_outputs": units,
            "head": dataclasses.asdict(head),
            "base_info": _jsonable(base.info),
        }
        if cut_record is not None:
            metadata["cut"] = cut_record
        base, pooled = _multi_output(base, head)
        metadata["head_blocks"] = pooled
        inputs = keras.Input(shape=shape, name="image")
        x = Preprocessing(base.preprocessing, metadata=metadata, name="preprocessing")(
            inputs
        )
        x = base.model(x)
        outputs = build_head(x, task, units, head)
        model = keras.Model(inputs, outputs, name=name or f"tltf_{base.name}")
        base.model.trainable = False
        return model


def _multi_output(base: Base, head: HeadConfig) -> tuple[Base, list[str]]:
    """The base with one output per block the head reads (`head.pool_from`).

    Returns the base unchanged, with its top block only, for `pool_from="top"`,
    for bases that output vectors and when no block below the top can be read.
    """
    from tltf.bases.cut import block_outputs, resolve_block
    from tltf.heads import pool_positions

    names = base.block_map.names
    if head.pool_from == "top" or len(base.model.output_shape) != 4:
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
            int(t.shape[-1]) if t is not None and len(t.shape) == 4 else None
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
    if len(positions) == 1 or any(len(t.shape) != 4 for t in outputs):
        return base, [names[-1]]
    model = keras.Model(base.model.inputs, outputs, name=base.model.name)
    return dataclasses.replace(base, model=model), [names[p] for p in positions]


def _auto_cut(base: Base, data, shape) -> str | None:
    """The cut `probe_blocks` recommends for `data` (leave-one-out), or None."""
    from tltf.probe import probe_blocks

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
    result = probe_blocks(probed, data, input_shape=tuple(shape), verbose=0)
    top = result.table[-1]
    if result.cut is None:
        why = f"the top block is as good as any: {top['val_accuracy']:.3f}"
    else:
        why = (
            f"{result.best['block']} {result.best['val_accuracy']:.3f}, top "
            f"{top['val_accuracy']:.3f}"
        )
    print(
        f"tltf: cut='auto' -> {result.cut!r} (leave-one-out accuracy of a linear "
        f"probe: {why})."
    )
    return result.cut


def model_base(model: keras.Model) -> Base:
    """The base of a model built by `build_model`, as a `Base` (for the probe)."""
    info = model_info(model)
    pre = next(
        layer
        for layer in model.layers
        if isinstance(layer, Preprocessing) and "base_layer" in layer.metadata
    )
    return Base(
        model=info.base,
        name=info.metadata["base"],
        block_map=info.block_map,
        preprocessing=pre.mode,
    )


def _jsonable(info: dict[str, Any]) -> dict[str, Any]:
    return {
        k: v
        for k, v in info.items()
        if isinstance(v, (str, int, float, bool, type(None)))
    }


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """What tltf knows about a model it built.

    Attributes:
        base: keras.Model. The base, a layer of the model. It has one output per
            block the head reads (`HeadConfig.pool_from`), the top block's last.
        block_map: BlockMap. The base's blocks, bottom to top.
        head_layers: tuple of keras layers. The layers after the base.
        metadata: dict. The raw metadata (base name, task, head config).
    """

    base: keras.Model
    block_map: BlockMap
    head_layers: tuple
    metadata: dict

    @property
    def task(self) -> str:
        """The model's task, e.g. "multiclass"."""
        return self.metadata["task"]

    @property
    def logits(self) -> bool:
        """Whether the model outputs logits."""
        return bool(self.metadata.get("head", {}).get("logits", False))


def model_info(model: keras.Model) -> ModelInfo:
    """Finds the base, its block map and the head in a model built by tltf.

    Works on a freshly built model and on one loaded from `.keras`.

    Raises:
        ModelError: when the model was not built by `tltf.build_model`.
    """
    if not isinstance(model, keras.Model):
        raise ModelError(f"Expected a keras.Model. Received: {type(model).__name__}")
    pre = next(
        (
            layer
            for layer in model.layers
            if isinstance(layer, Preprocessing) and "base_layer" in layer.metadata
        ),
        None,
    )
    if pre is None:
        raise ModelError(
            f"Model {model.name!r} was not built by tltf.build_model: it has no tltf "
            "preprocessing layer. Build it with `tltf.build_model(base, ...)`; to "
            "fine-tune an arbitrary model, pass it as the base."
        )
    meta = pre.metadata
    try:
        base = model.get_layer(meta["base_layer"])
    except ValueError:
        raise ModelError(
            f"Model {model.name!r} lost its base layer {meta['base_layer']!r}."
        ) from None
    head = tuple(
        layer
        for layer in model.layers
        if layer is not base
        and layer is not pre
        and not isinstance(layer, keras.layers.InputLayer)
    )
    return ModelInfo(base, BlockMap.from_config(meta["blocks"]), head, meta)


def as_model(model: keras.Model | str | os.PathLike) -> keras.Model:
    """A keras.Model as given, or loaded (safely) from the path of a `.keras` file."""
    if isinstance(model, (str, os.PathLike)):
        return load_model(model)
    if not isinstance(model, keras.Model):
        raise ModelError(
            "Expected a keras.Model or the path of a .keras file. Received: "
            f"{type(model).__name__}"
        )
    return model


def load_model(path: str | os.PathLike, **kwargs) -> keras.Model:
    """Loads a `.keras` model, always with `safe_mode=True`.

    tltf's layers are registered on import, so no `custom_objects` are needed.
    Safe mode is forced for the whole load, also when Keras's global switch for
    unsafe deserialization is on, so no code stored in the file (a Lambda layer's
    function, say) ever runs. A missing, truncated or unsafe file, or one that
    names an unknown class or function, raises a `ModelError` that says so, and
    the file is left untouched.

    Args:
        path: str or PathLike. The `.keras` file.
        **kwargs: Passed to `keras.saving.load_model`, except `safe_mode`.

    Returns:
        The model.

    Example:

    >>> model = tltf.load_model("runs/flowers/best.keras")
    """
    if kwargs.pop("safe_mode", True) is not True:
        raise ConfigError("tltf only loads models with safe_mode=True.")
    path = Path(path).expanduser()
    if not path.is_file():
        raise ModelError(f"Model file {str(path)!r} does not exist.")
    if path.suffix == ".keras" and not zipfile.is_zipfile(path):
        raise ModelError(
            f"{str(path)!r} is not a valid .keras file (it is truncated or not a "
            "zip archive). Re-export it, or use the run's last good checkpoint."
        )
    try:
        with SafeModeScope(True):
            return keras.saving.load_model(path, safe_mode=True, **kwargs)
    except TypeError as error:
        # Keras reports an unknown or invalid object as a TypeError that wraps
        # the real cause, several levels deep.
        raise ModelError(_deserialization_problem(path, error)) from None
    except ValueError as error:
        message = str(error)
        if "Lambda" in message or "safe_mode" in message:
            raise ModelError(
                f"{str(path)!r} holds a Lambda layer or other arbitrary code, which "
                "tltf refuses to load (safe_mode=True). Rebuild the model with "
                "registered layers instead of Lambda layers."
            ) from None
        raise ModelError(
            f"Could not load {str(path)!r}: {message.splitlines()[0]}"
        ) from None
    except (OSError, KeyError, zipfile.BadZipFile) as error:
        raise ModelError(
            f"Could not load {str(path)!r} ({error.__class__.__name__}: {error}). The "
            "file may be truncated; use the last good checkpoint."
        ) from None


_UNKNOWN_OBJECT = re.compile(
    r"Could not locate (class|function) '([^']*)'"
    r"(?:.*?Full object config: \{'module': '([^']*)')?",
    re.DOTALL,
)
_BAD_CLASS = re.compile(r"<class '([^']+)'> could not be deserialized")


def _deserialization_problem(path: Path, error: BaseException) -> str:
    """One message for Keras's nested deserialization errors: what, where, the fix."""
    chain = [error]
    while chain[-1].__context__ is not None and len(chain) < 50:
        chain.append(chain[-1].__context__)
    cause = str(chain[-1]).strip()
    unknown = _UNKNOWN_OBJECT.search(cause)
    if unknown:
        kind, name, module = unknown.groups()
        qualified = f"{module}.{name}" if module else name
        return (
            f"Could not load {str(path)!r}: it names the {kind} {qualified!r}, which "
            "is not a registered Keras object; tltf did not import or run it. If it "
            "is your own layer or function, import the module that registers it "
            "(@keras.saving.register_keras_serializable) before loading; otherwise "
            "re-export the model from the code that built it."
        )
    classes = [m.group(1) for e in chain for m in [_BAD_CLASS.search(str(e))] if m]
    where = f" of {classes[-1].rsplit('.', 1)[-1]!r}" if classes else ""
    reason = cause.rsplit("Exception encountered:", 1)[-1].strip().splitlines()
    return (
        f"Could not load {str(path)!r}: the saved config{where} is invalid: "
        f"{reason[0] if reason else type(chain[-1]).__name__}. The file was edited "
        "or written by other code; re-export the model from the code that built it."
    )
