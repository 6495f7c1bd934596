"""Loading a base: a registry name, a saved tltf base, or any keras.Model."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import warnings
from pathlib import Path
from typing import Any

import keras

from tltf._checks import check_keywords, named_arguments, take_renamed
from tltf._io import atomic_dir, check_replaceable
from tltf.bases.blockmaps import BlockMap, infer_block_map, validate_block_map
from tltf.bases.registry import (
    REGISTRY,
    BaseSpec,
    constructor_arguments,
    get_spec,
    shipped_base_path,
)
from tltf.bases.weights import load_weights_file, offline_first, resolve_weights_dir
from tltf.errors import ConfigError, InputShapeError, ModelError
from tltf.layers import PREPROCESSING_MODES, Preprocessing
from tltf.saving import MODEL_SUFFIXES, load_model

#: File names inside a saved base folder (see `save_base`).
BASE_MODEL_FILE = "base.keras"
BASE_INFO_FILE = "base.json"
#: The empty file in every base folder `save_base` writes: only such a folder (or
#: an earlier saved base) is ever replaced by `save_base`.
BASE_MARKER = ".tltf-base"


@dataclasses.dataclass
class Base:
    """A feature extractor with what tltf needs to fine-tune it.

    Attributes:
        model: keras.Model. The headless base (a feature map or pooled features).
        name: str. The registry name, or the model's name for other bases.
        block_map: BlockMap. The base's blocks, bottom to top.
        preprocessing: str. The preprocessing mode applied before the base.
        spec: BaseSpec or None. The registry entry, for Keras Applications.
        info: dict. Where the base came from (weights, pretraining metadata).
    """

    model: keras.Model
    name: str
    block_map: BlockMap
    preprocessing: str = "none"
    spec: BaseSpec | None = None
    info: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def input_shape(self) -> tuple:
        """The base's input shape, without the batch dimension."""
        return tuple(self.model.input_shape[1:])

    @property
    def min_size(self) -> int:
        """The smallest input height and width the base accepts."""
        return self.spec.min_size if self.spec else int(self.info.get("min_size", 1))

    def __repr__(self) -> str:
        """One line: the name, input shape, blocks, weights and folder.

        The dataclass's own repr printed every block's layers and the whole
        pretraining record (kilobytes); they stay in `block_map` and `info`.
        """
        names = self.block_map.names
        blocks = f"{len(names)} blocks"
        if names:
            blocks += f" ({names[0]} .. {names[-1]})"
        fields = [repr(self.name), f"input_shape={self.input_shape}", blocks]
        fields += [
            f"{key}={self.info[key]!r}"
            for key in ("weights", "path")
            if key in self.info
        ]
        return f"Base({', '.join(fields)})"


def _check_input_shape(spec: BaseSpec, input_shape, weights) -> tuple[int, int, int]:
    if input_shape is None:
        return (spec.default_size, spec.default_size, 3)
    shape = tuple(input_shape)
    if len(shape) != 3 or not all(isinstance(d, int) and d > 0 for d in shape):
        raise InputShapeError(
            "Expected input_shape=(height, width, channels) with positive integers. "
            f"Received: input_shape={input_shape!r}"
        )
    height, width, channels = shape
    if min(height, width) < spec.min_size:
        raise InputShapeError(
            f"{spec.name} needs inputs of at least {spec.min_size}x{spec.min_size} "
            f"pixels. Received: input_shape={shape}. Resize images to at least "
            f"{spec.min_size} px (its ImageNet size is {spec.default_size})."
        )
    if weights == "imagenet" and channels != 3:
        raise InputShapeError(
            f"ImageNet weights expect 3 (RGB) channels. Received: channels={channels}"
            " in input_shape. Convert the images to RGB (tltf's data layer does it "
            "for image folders), or use weights=None."
        )
    return shape


def _describe_weights(weights) -> str:
    return "random" if weights is None else str(weights)


#: The start of Keras's notice that MobileNetV3 loads its 224 px weights.
_SIZE_NOTICE = r"`input_shape` is undefined or non-square, or `rows` is not 224"


def check_constructor_kwargs(spec: BaseSpec, kwargs: dict) -> None:
    """Rejects a keyword that the registry base's Keras constructor does not take.

    Raises:
        ConfigError: naming the closest argument and every one it takes.
    """
    takes = [
        name
        for name in named_arguments(spec.constructor)
        if name not in ("include_top", "input_shape", "weights")
    ]
    check_keywords(
        kwargs,
        takes,
        f"keras.applications.{spec.constructor_name}",
        f"{spec.name!r} takes {', '.join(takes)} (tltf sets include_top, "
        "input_shape and weights itself).",
    )


def _application_base(
    spec: BaseSpec, weights, input_shape, weights_dir, constructor_kwargs
) -> Base:
    shape = _check_input_shape(spec, input_shape, weights)
    is_file = weights not in ("imagenet", None)
    if is_file and not isinstance(weights, (str, os.PathLike)):
        raise ConfigError(
            "Expected weights='imagenet', None, or the path of a weights file. "
            f"Received: weights={weights!r}"
        )
    check_constructor_kwargs(spec, constructor_kwargs)
    kwargs = dict(include_top=False, input_shape=shape, **constructor_kwargs)
    try:
        with (
            offline_first(resolve_weights_dir(weights_dir), spec.name),
            warnings.catch_warnings(),
        ):
            # MobileNetV3 at any size but 224 says it loads the 224 weights:
            # without the top, those are the weights for every size.
            warnings.filterwarnings("ignore", message=_SIZE_NOTICE)
            model = spec.constructor(weights=None if is_file else weights, **kwargs)
    except (ValueError, TypeError) as error:
        raise ConfigError(
            f"keras.applications.{spec.constructor_name} rejected the arguments "
            f"{kwargs | {'weights': weights}}: {error} Check the values against "
            f"its documentation (`help(keras.applications.{spec.constructor_name})`)."
        ) from None
    if is_file:
        load_weights_file(model, weights, f"{spec.name} at {shape}")
    block_map = spec.block_map(model)
    validate_block_map(model, block_map)
    info = {
        "weights": _describe_weights(weights),
        "architecture": spec.name,
        "constructor_kwargs": dict(constructor_kwargs),
    }
    return Base(model, spec.name, block_map, spec.preprocessing, spec, info)


def is_model_file(path: str | os.PathLike) -> bool:
    """Whether `path` is a model file (`.keras`, or a legacy `.h5`/`.hdf5`): a
    model whose base `load_base` takes."""
    path = Path(path).expanduser()
    return path.suffix.lower() in MODEL_SUFFIXES and path.is_file()


def _tltf_preprocessing(model: keras.Model) -> Preprocessing | None:
    """The preprocessing layer of a model that `build_model` built, else None."""
    for layer in model.layers:
        if isinstance(layer, Preprocessing) and "base_layer" in layer.metadata:
            return layer
    return None


def _fine_tuned_base(model: keras.Model, pre: Preprocessing) -> Base:
    """The base inside a model that tltf built (and maybe fine-tuned), as a copy.

    The copy ends at the base's top block (the head's last input; a cut model's
    base ends at its cut) and has its own weights: training a model built on it
    leaves `model` as it is.
    """
    metadata = pre.metadata
    inner = model.get_layer(metadata["base_layer"])
    top = inner.outputs[-1]  # one output per block the head reads, the top last
    features = keras.Model(inner.inputs[0], top, name=metadata["base_layer"])
    try:
        copy = keras.models.clone_model(features)
    except (TypeError, ValueError, NotImplementedError) as error:
        reason = (str(error).strip().splitlines() or [type(error).__name__])[-1]
        raise ModelError(
            f"Could not copy the base of model {model.name!r} ({reason}). Its layers "
            "must rebuild from their config (`get_config`). Or share its weights: "
            "info = tltf.model_info(model); tltf.build_model(keras.Model("
            "info.base.inputs, info.base.outputs[-1]), num_classes, "
            f"block_map=info.block_map, preprocessing={pre.mode!r})."
        ) from None
    copy.set_weights(features.get_weights())
    block_map = BlockMap.from_config(metadata["blocks"])
    validate_block_map(copy, block_map)
    info = {
        **{k: v for k, v in metadata.get("base_info", {}).items() if k != "path"},
        "weights": f"fine-tuned in model {model.name!r}",
        "fine_tuned": True,
    }
    return Base(copy, metadata["base"], block_map, pre.mode, None, info)


def _producer(tensor):
    """The layer that made `tensor` in a functional graph, or None."""
    history = getattr(tensor, "_keras_history", None)
    return getattr(history, "operation", None)


def _one_input(layer):
    """The one input tensor of a layer called once, or None."""
    try:
        tensor = layer.input
    except (AttributeError, ValueError):
        return None
    return None if isinstance(tensor, (list, tuple, dict)) else tensor


def _gives_scores(layer) -> bool:
    """Whether `layer` ends in a softmax or sigmoid: class scores."""
    activation = getattr(layer, "activation", None)
    return getattr(activation, "__name__", None) in ("softmax", "sigmoid")


#: Weightless layers between a classifier and the feature map it classifies:
#: they go with the top, so the base ends where `include_top=False` ends it.
_GLOBAL_POOLING = (keras.layers.GlobalAveragePooling2D, keras.layers.GlobalMaxPooling2D)
_BEFORE_CLASSIFIER = (keras.layers.Dropout, *_GLOBAL_POOLING, keras.layers.Flatten)


def _classifier_top(model: keras.Model):
    """The classification top a model ends in, or None.

    A top is what `include_top=True` adds to a Keras Applications model and what
    a trained classifier ends in: a last Dense with a softmax or sigmoid (or any
    Dense named "predictions"), or a softmax or sigmoid Activation after a
    Dense or 1x1 Conv2D classifier and an optional Flatten or Reshape (MobileNet
    and MobileNetV3), or after a Conv2D of any kernel size whose class maps a
    global pooling averages (an all-convolutional top, as in Network in Network
    or a mini-Xception). The Dropout, global pooling and Flatten layers right
    before the classifier go with it, so an Applications model's base ends
    where `include_top=False` ends it (VGG's fully connected layers, which
    carry weights, stay).

    Returns:
        `(classifier, features)`: the classifier layer and the tensor the base
        without its top ends at; None when the model ends in anything else.
    """
    last = _producer(model.outputs[0])
    classifier = None
    if isinstance(last, keras.layers.Dense) and (
        _gives_scores(last) or last.name.lower() == "predictions"
    ):
        classifier = last
    elif isinstance(last, keras.layers.Activation) and _gives_scores(last):
        inner = _producer(_one_input(last))
        while isinstance(inner, (keras.layers.Flatten, keras.layers.Reshape)):
            inner = _producer(_one_input(inner))
        pooled = isinstance(inner, _GLOBAL_POOLING)
        if pooled:  # an all-convolutional top: class maps, pooled, then scores
            inner = _producer(_one_input(inner))
        pointwise = isinstance(inner, keras.layers.Conv2D) and tuple(
            inner.kernel_size
        ) == (1, 1)
        if (
            isinstance(inner, keras.layers.Dense)
            or pointwise
            or (pooled and isinstance(inner, keras.layers.Conv2D))
        ):
            classifier = inner
    features = _one_input(classifier) if classifier is not None else None
    if features is None:
        return None
    while isinstance(_producer(features), _BEFORE_CLASSIFIER):
        features = _one_input(_producer(features))
    if features is None or any(features is t for t in model.inputs):
        return None
    return classifier, features


def _without_top(model: keras.Model) -> keras.Model:
    """`model` without its classification top (`_classifier_top`), with a note."""
    top = _classifier_top(model)
    if top is None:
        return model
    classifier, features = top
    headless = keras.Model(model.inputs, features, name=model.name)
    end = _producer(features)
    print(
        f"tltf: note: {model.name!r} ends in a classifier ({classifier.name!r}, "
        f"{classifier.__class__.__name__} with {_units(classifier)} outputs): the "
        f"base ends before it, at {end.name!r} {tuple(features.shape[1:])}, and "
        "tltf adds its own head. (A Keras Applications model built with "
        "include_top=False has no classifier; with block_map= the base keeps it.)"
    )
    return headless


def _units(layer) -> int | None:
    return getattr(layer, "units", None) or getattr(layer, "filters", None)


#: Registry entries by their name without "_" (the key `_applications_entry` makes).
_BY_KEY = {name.replace("_", ""): spec for name, spec in REGISTRY.items()}
#: The end of MobileNet's and MobileNetV2's model names: "_{alpha}_{size}".
_ALPHA_AND_SIZE = re.compile(r"_\d+(\.\d+)?_\d+$")


def _applications_entry(model: keras.Model) -> tuple[BaseSpec, BlockMap] | None:
    """The registry entry and block map of a Keras Applications model, or None.

    A model that a Keras Applications constructor (or tltf's RegNet port)
    built is recognised by the name the constructor gives it
    (`mobilenetv2_1.00_224`, `efficientnetv2-b0`, `MobileNetV3Small`, `resnet50`,
    ...), and only if the entry's block map fits it: a model of another
    architecture that happens to carry such a name is not.
    """
    key = _ALPHA_AND_SIZE.sub("", model.name.lower())
    spec = _BY_KEY.get(key.replace("_", "").replace("-", ""))
    if spec is None:
        return None
    try:
        block_map = spec.block_map(model)
        validate_block_map(model, block_map)
    except Exception:  # any rule that does not fit: not that architecture
        return None
    return spec, block_map


def _preprocessing_words(mode: str) -> str:
    if mode == "none":
        return "'none': the model normalises its inputs itself"
    return repr(mode)


def _custom_base(model: keras.Model, blocks, preprocessing: str | None) -> Base:
    if not isinstance(model, keras.Model):
        raise ConfigError(f"Expected a keras.Model. Received: {type(model).__name__}")
    pre = _tltf_preprocessing(model) if getattr(model, "layers", None) else None
    if pre is not None:
        if blocks is not None or preprocessing is not None:
            raise ConfigError(
                f"Model {model.name!r} was built by tltf: its base brings its own "
                "block map and preprocessing. Drop block_map= and preprocessing=."
            )
        return _fine_tuned_base(model, pre)
    if not model.built or not model.layers:
        raise ModelError(
            f"Model {model.name!r} has no layers graph yet. Build it (call it on an "
            "input or give it an Input) before using it as a base."
        )
    if not getattr(model, "inputs", None):
        raise ModelError(
            f"Model {model.name!r} is a subclassed keras.Model: it has no graph of "
            "layers that tltf can split into blocks. Pass a functional or Sequential "
            "model, or wrap this one as a base of one block: inputs = keras.Input("
            "(height, width, 3)); base = keras.Model(inputs, model(inputs))."
        )
    shapes = [tuple(t.shape) for t in model.inputs]
    if len(shapes) != 1 or len(shapes[0]) != 4:
        raise ModelError(
            f"A base takes one image input of shape (batch, height, width, "
            f"channels). Model {model.name!r} has inputs of shapes {shapes}. Wrap "
            "the image part of it in a model of its own and pass that."
        )
    if len(model.outputs) != 1:
        raise ModelError(
            f"A base has one output, its top feature map. Model {model.name!r} has "
            f"{len(model.outputs)}. Pass the part that ends at the features you "
            "want, e.g. keras.Model(model.inputs, model.outputs[-1]); for the base "
            "of a model that tltf built, pass that model: tltf.load_base(model)."
        )
    entry = None
    if blocks is None:
        model = _without_top(model)
        entry = _applications_entry(model)
        block_map = entry[1] if entry else infer_block_map(model)
    else:
        block_map = (
            blocks if isinstance(blocks, BlockMap) else BlockMap.from_config(blocks)
        )
        validate_block_map(model, block_map)
    mode = preprocessing or "none"
    if entry is not None:
        spec = entry[0]
        mode = preprocessing or spec.preprocessing
        where = "tltf.bases.regnet" if spec.family == "regnet" else "keras.applications"
        if mode == spec.preprocessing:
            words = (
                f"its preprocessing ({_preprocessing_words(mode)}), so it takes raw "
                "pixels in [0, 255], as registry bases do"
                + ("" if preprocessing else " (preprocessing= sets another)")
            )
        else:
            words = (
                f"preprocessing={mode!r} as passed (its family's is "
                f"{spec.preprocessing!r})"
            )
        print(
            f"tltf: note: {model.name!r} is {where}.{spec.constructor_name}: tltf "
            f"uses its block map ({len(block_map)} blocks) and {words}."
        )
    _check_mode(mode)
    return Base(model, model.name, block_map, mode, None, {"weights": "user model"})


def load_base(
    base: str | os.PathLike | keras.Model | Base,
    *,
    weights: str | os.PathLike | None = "imagenet",
    input_shape: tuple | None = None,
    weights_dir: str | os.PathLike | None = None,
    block_map=None,
    preprocessing: str | None = None,
    **constructor_kwargs,
) -> Base:
    """Loads a headless base and its block map.

    Args:
        base: A registry name (`"mobilenet_v2"`, see `list_bases()`), the short
            name of a base shipped with tltf (`"demo"`, see `SHIPPED_BASES`; a
            folder of that name is `"./demo"`), the folder of a base saved by
            `save_base` or `tltf.pretrain`, a `keras.Model` with one image input
            and one output, a model that `build_model` built (its base as it is
            now, fine-tuned or not: a copy with its own weights, block map and
            preprocessing), the `.keras` file of either kind of model (loaded
            with `safe_mode=True`, e.g. a run's `best.keras`; a Keras 2 `.h5` or
            `.hdf5` file loads the same way), or a `Base`.
        weights: "imagenet" (Keras's download and cache), None (random), or the
            path of a weights file for the architecture. Ignored for saved and
            shipped bases and models. Defaults to "imagenet".
        input_shape: tuple or None. `(height, width, channels)`. Defaults to the
            base's ImageNet size.
        weights_dir: str or None. An offline folder searched for the ImageNet
            weights file before any download. Defaults to `$TLTF_WEIGHTS_DIR`.
        block_map: An explicit block map, as a `BlockMap`, a
            `{block: [layer names]}` dict or `[[block, [layers]], ...]`, bottom to
            top. For a registry name, a saved base or a `Base` it replaces the
            base's own map (one `tltf: note:` line says so). For a keras.Model
            it keeps the model whole; without it, a model that ends in a
            classifier loses that top (tltf's head replaces it), and a Keras
            Applications model gets the registry's block map. Called `blocks` before; `blocks=` still works, with a
            DeprecationWarning. Defaults to None (inferred; see
            `infer_block_map`).
        preprocessing: str or None. The preprocessing mode the base expects,
            one of `PREPROCESSING_MODES`: "tf" ([-1, 1]), "caffe", "torch",
            "unit" ([0, 1]: x / 255, for a model trained on such inputs) or
            "none". Defaults to None: a registry base's family's, a saved
            base's own, a Keras Applications model's family's (recognised by
            the name its constructor gives it, if the registry's block map fits
            it), else "none". A mode that differs from the base's own is said
            in one `tltf: note:` line.
        **constructor_kwargs: Extra arguments of the Keras constructor, such as
            `alpha=0.35` for MobileNetV2.

    Returns:
        A `Base`.

    Example:

    >>> base = tltf.load_base("mobilenet_v2", weights=None, input_shape=(96, 96, 3))
    >>> base.block_map.names[:3]
    ['stem', 'block_1', 'block_2']
    >>> tltf.load_base("demo").input_shape       # shipped, offline
    (64, 64, 3)
    """
    block_map = take_renamed(
        constructor_kwargs, "blocks", "block_map", block_map, "load_base"
    )
    if isinstance(base, keras.Model):
        return _custom_base(base, block_map, preprocessing)
    if isinstance(base, (str, os.PathLike)) and is_model_file(base):
        return _custom_base(load_model(base, compile=False), block_map, preprocessing)
    loaded, whose = _loaded_base(
        base, weights, input_shape, weights_dir, **constructor_kwargs
    )
    loaded = _with_block_map(loaded, block_map, whose)
    # A registry base's mode is its family's, whichever way it came.
    family = "its family's" if loaded.spec is not None else whose
    return _with_preprocessing(loaded, preprocessing, family)


def _loaded_base(base, weights, input_shape, weights_dir, **constructor_kwargs):
    """A `Base` as given, a shipped or saved base, or a registry base, and the
    words for its own settings (which `block_map=` and `preprocessing=` replace)."""
    if isinstance(base, Base):
        return base, "the Base's"
    shipped = shipped_base_path(base)
    if shipped is not None:
        return load_saved_base(shipped, input_shape=input_shape), "the shipped base's"
    if isinstance(base, os.PathLike) or (
        isinstance(base, str) and (os.sep in base or Path(base).exists())
    ):
        if Path(base).suffix.lower() in MODEL_SUFFIXES:  # is_model_file was False
            raise ModelError(
                f"No such model file: {os.fspath(base)!r}. Check the path (a run's "
                "model is <run folder>/best.keras)."
            )
        return load_saved_base(base, input_shape=input_shape), "the saved base's"
    spec = get_spec(base)
    loaded = _application_base(
        spec, weights, input_shape, weights_dir, constructor_kwargs
    )
    return loaded, "the registry's"


def _with_block_map(base: Base, blocks, whose: str) -> Base:
    """`base` with the block map passed instead of its own, said in one line."""
    if blocks is None:
        return base
    block_map = blocks if isinstance(blocks, BlockMap) else BlockMap.from_config(blocks)
    validate_block_map(base.model, block_map)
    if block_map == base.block_map:
        return base
    print(
        f"tltf: note: base {base.name!r} uses the block map passed "
        f"({len(block_map)} blocks) instead of {whose} ({len(base.block_map)})."
    )
    return dataclasses.replace(base, block_map=block_map)


def _with_preprocessing(base: Base, preprocessing: str | None, whose: str) -> Base:
    """`base` with `preprocessing` instead of its own mode, said in one line."""
    if preprocessing is None or preprocessing == base.preprocessing:
        return base
    _check_mode(preprocessing)
    print(
        f"tltf: note: base {base.name!r} gets preprocessing={preprocessing!r} as "
        f"passed ({whose} is {base.preprocessing!r})."
    )
    return dataclasses.replace(base, preprocessing=preprocessing)


def _check_mode(preprocessing) -> None:
    if preprocessing not in PREPROCESSING_MODES:
        raise ConfigError(
            f"Expected preprocessing in {PREPROCESSING_MODES}. "
            f"Received: preprocessing={preprocessing!r}"
        )


#: The `load_base` keywords that `build_model` and `probe_blocks` take through
#: their `**kwargs`, with the arguments of the Keras constructor.
LOAD_OPTIONS = ("weights", "weights_dir", "block_map", "preprocessing")


def check_load_kwargs(kwargs: dict, function, caller: str) -> None:
    """Rejects a keyword that neither `function` nor `load_base` takes.

    `function` passes its `**kwargs` on to `load_base`: each must be one of
    `LOAD_OPTIONS` or an argument of a registry constructor
    (`constructor_arguments`, e.g. `alpha`).

    Raises:
        ConfigError: for any other keyword, naming the closest of `function`'s
            arguments, `LOAD_OPTIONS` and the constructor arguments.
    """
    check_keywords(
        kwargs,
        (*named_arguments(function), *LOAD_OPTIONS, *constructor_arguments()),
        caller,
        f"Its other keywords go to tltf.load_base ({', '.join(LOAD_OPTIONS)}) "
        "and to the Keras constructor (e.g. alpha).",
    )


def save_base(base: Base, path: str | os.PathLike, info: dict | None = None) -> Path:
    """Saves a base as a reusable folder: `base.keras` plus `base.json`.

    The folder is written next to its destination and moved into place in one
    step, so an interrupted save never leaves a half-written base, and an existing
    base is replaced only by a complete one. Only a saved base (or an empty
    folder) is replaced: never a file or a folder that tltf did not write.

    Args:
        base: Base. The base to save.
        path: str or PathLike. The destination folder.
        info: dict or None. Extra JSON metadata (for example, how it was trained).

    Returns:
        The folder's path.

    Raises:
        ConfigError: `path` holds a file or a folder that is not a saved base.
        DiskFullError: the disk is full.
    """
    path = Path(path).expanduser()
    with atomic_dir(
        path, marker=BASE_MARKER, recognise=_is_saved_base, what="saved base"
    ) as tmp:
        base.model.save(tmp / BASE_MODEL_FILE)
        record = {
            "name": base.name,
            "preprocessing": base.preprocessing,
            "blocks": base.block_map.to_config(),
            "input_shape": list(base.input_shape),
            "info": {"min_size": base.min_size, **base.info, **(info or {})},
        }
        (tmp / BASE_INFO_FILE).write_text(json.dumps(record, indent=2))
    return path


def check_base_path(path: str | os.PathLike) -> None:
    """Raises now, before any training, unless `save_base` may write to `path`.

    Raises:
        ConfigError: `path` holds a file or a folder that is not a saved base.
    """
    check_replaceable(
        Path(path).expanduser(),
        marker=BASE_MARKER,
        recognise=_is_saved_base,
        what="saved base",
    )


def _is_saved_base(folder: Path) -> bool:
    """Whether a folder holds a saved base and nothing else (saved before markers)."""
    names = {p.name for p in folder.iterdir()}
    return BASE_INFO_FILE in names and names <= {BASE_MODEL_FILE, BASE_INFO_FILE}


def read_base_record(folder: str | os.PathLike) -> dict | None:
    """The `base.json` record of a saved base folder, for listings: None when it
    cannot be read as JSON, {} when it holds JSON that is not an object
    (`load_saved_base` reports what is wrong)."""
    try:
        record = json.loads((Path(folder) / BASE_INFO_FILE).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else {}


def check_saved_base(path: str | os.PathLike) -> None:
    """Raises unless `path` is a folder that `save_base` wrote.

    Raises:
        ModelError: naming what is missing; for a run folder, its `best.keras`.
    """
    path = Path(path).expanduser()
    if (path / BASE_MODEL_FILE).is_file() and (path / BASE_INFO_FILE).is_file():
        return
    best = path / "best.keras"  # a run folder's model (tltf.runs.BEST_MODEL)
    hint = (
        f" It holds {best.name}, as a run folder does: pass {str(best)!r} to "
        "build on that model's fine-tuned base."
        if best.is_file()
        else ""
    )
    raise ModelError(
        f"{str(path)!r} is not a saved tltf base: expected {BASE_MODEL_FILE} and "
        f"{BASE_INFO_FILE} inside it. Save one with `tltf.save_base` or "
        "`tltf.pretrain`, or pass a registry name (see `tltf.list_bases()`)." + hint
    )


def load_saved_base(path: str | os.PathLike, input_shape: tuple | None = None) -> Base:
    """Loads a base folder written by `save_base` (always with `safe_mode=True`).

    Args:
        path: str or PathLike. The folder.
        input_shape: tuple or None. A new `(height, width, channels)`. A base of a
            registry architecture (such as one from `tltf.pretrain`) is rebuilt at
            that size with the saved weights: convolution weights do not depend on
            the input size. Defaults to None (the saved size).

    Returns:
        The `Base`.
    """
    path = Path(path).expanduser()
    check_saved_base(path)
    model_file, info_file = path / BASE_MODEL_FILE, path / BASE_INFO_FILE
    model = load_model(model_file)
    try:
        record = json.loads(info_file.read_text())
        block_map = BlockMap.from_config(record["blocks"])
        mode = record["preprocessing"]
    except (ValueError, KeyError, TypeError) as error:
        raise ModelError(
            f"{str(info_file)!r} is not valid base metadata: {error}"
        ) from None
    validate_block_map(model, block_map)
    info = {**record.get("info", {}), "path": str(path)}
    name = record.get("name", model.name)
    if input_shape is None or tuple(input_shape) == tuple(model.input_shape[1:]):
        return Base(model, name, block_map, mode, None, info)
    return _resized(model, name, mode, info, input_shape)


def _resized(saved: keras.Model, name: str, mode: str, info: dict, input_shape) -> Base:
    """Rebuilds a saved registry-architecture base at another input size."""
    architecture = info.get("architecture")
    if architecture is None:
        raise InputShapeError(
            f"Base {name!r} was saved for inputs of shape {saved.input_shape[1:]} and "
            f"cannot be rebuilt for input_shape={tuple(input_shape)}: its architecture "
            "is not a registry entry. Resize the images instead."
        )
    spec = get_spec(architecture)
    shape = _check_input_shape(spec, input_shape, None)
    channels = saved.input_shape[-1]
    if shape[-1] != channels:
        raise InputShapeError(
            f"Base {name!r} was pretrained on {channels}-channel images. Received: "
            f"input_shape={shape}. Build the model with {channels} channels "
            f"(input_shape={(*shape[:2], channels)}) and give it {channels}-channel "
            "images"
            + (
                " (np.repeat(images, 3, axis=-1) turns grayscale into RGB)."
                if channels == 3
                else "."
            )
        )
    kwargs = info.get("constructor_kwargs", {})
    model = spec.constructor(
        weights=None, include_top=False, input_shape=shape, **kwargs
    )
    try:
        model.set_weights(saved.get_weights())
    except ValueError as error:
        raise ModelError(
            f"Could not rebuild base {name!r} at {shape}: {error}"
        ) from None
    block_map = spec.block_map(model)
    validate_block_map(model, block_map)
    return Base(model, name, block_map, mode, spec, info)
