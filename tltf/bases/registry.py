"""The base registry: one entry per Keras Applications constructor.

Each `BaseSpec` records the constructor, its snake_case name, the matching
`preprocess_input` (as a preprocessing mode built into the model), the default and
minimum input sizes, and the family's block rule. The table below is the single
source of truth; `tests/bases/test_registry.py` iterates it, and fails when Keras
ships a constructor that the table lacks.

`SHIPPED_BASES` names the saved bases that ship inside the package by a short
name, such as "demo"; `load_base` resolves them before anything else.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
import inspect
from collections.abc import Callable
from pathlib import Path

import keras

from tltf.bases import regnet, rules
from tltf.bases.blockmaps import (
    BlockMap,
    block_map_from_assignment,
    block_map_from_rule,
)
from tltf.errors import ModelError, UnknownBaseError, suggest


@dataclasses.dataclass(frozen=True)
class BaseSpec:
    """A registry entry.

    Attributes:
        name: str. The snake_case registry name, e.g. "mobilenet_v2".
        constructor_name: str. The constructor, e.g. "MobileNetV2".
        family: str. The module that defines it, e.g. "mobilenet_v2"; it owns the
            `preprocess_input` and the block rule.
        preprocessing: str. The mode of the family's `preprocess_input`: "tf",
            "caffe", "torch" or "none" (the model normalises inputs itself).
        default_size: int. The ImageNet input size.
        min_size: int. The smallest input size the architecture accepts.
    """

    name: str
    constructor_name: str
    family: str
    preprocessing: str
    default_size: int
    min_size: int

    @property
    def constructor(self) -> Callable[..., keras.Model]:
        """The model constructor, e.g. `keras.applications.MobileNetV2`."""
        if self.family == "regnet":
            return regnet.CONSTRUCTORS[self.constructor_name]
        return getattr(keras.applications, self.constructor_name)

    @property
    def preprocess_input(self) -> Callable:
        """The family's own `preprocess_input` function (for reference)."""
        if self.family == "regnet":
            return regnet.preprocess_input
        return getattr(keras.applications, self.family).preprocess_input

    def block_map(self, model: keras.Model) -> BlockMap:
        """The block map of `model`, a model built by this entry's constructor."""

        graph_rule = rules.GRAPH_RULES.get(self.family)
        if graph_rule is not None:
            return block_map_from_assignment(model, graph_rule(model))
        return block_map_from_rule(model, rules.RULES[self.family])


def _family(family, preprocessing, min_size, entries):
    return [
        BaseSpec(name, ctor, family, preprocessing, size, min_size)
        for ctor, name, size in entries
    ]


_EFFICIENTNET_SIZES = (224, 240, 260, 300, 380, 456, 528, 600)
_REGNET_SIZES = ("002", "004", "006", "008", "016", "032", "040", "064", "080", "120")
_REGNET_SIZES += ("160", "320")


_SPECS: list[BaseSpec] = [
    *_family("mobilenet", "tf", 32, [("MobileNet", "mobilenet", 224)]),
    *_family("mobilenet_v2", "tf", 32, [("MobileNetV2", "mobilenet_v2", 224)]),
    *_family(
        "mobilenet_v3",
        "none",
        32,
        [
            ("MobileNetV3Small", "mobilenet_v3_small", 224),
            ("MobileNetV3Large", "mobilenet_v3_large", 224),
        ],
    ),
    *_family(
        "efficientnet",
        "none",
        32,
        [
            (f"EfficientNetB{i}", f"efficientnet_b{i}", size)
            for i, size in enumerate(_EFFICIENTNET_SIZES)
        ],
    ),
    *_family(
        "efficientnet_v2",
        "none",
        32,
        [
            (f"EfficientNetV2{v}", f"efficientnet_v2_{v.lower()}", size)
            for v, size in [
                ("B0", 224),
                ("B1", 240),
                ("B2", 260),
                ("B3", 300),
                ("S", 384),
                ("M", 480),
                ("L", 480),
            ]
        ],
    ),
    *_family(
        "convnext",
        "none",
        32,
        [
            (f"ConvNeXt{v}", f"convnext_{v.lower()}", 224)
            for v in ("Tiny", "Small", "Base", "Large", "XLarge")
        ],
    ),
    *_family(
        "densenet",
        "torch",
        32,
        [(f"DenseNet{d}", f"densenet{d}", 224) for d in (121, 169, 201)],
    ),
    *_family("inception_v3", "tf", 75, [("InceptionV3", "inception_v3", 299)]),
    *_family(
        "inception_resnet_v2",
        "tf",
        75,
        [("InceptionResNetV2", "inception_resnet_v2", 299)],
    ),
    *_family(
        "nasnet",
        "tf",
        32,
        [("NASNetMobile", "nasnet_mobile", 224), ("NASNetLarge", "nasnet_large", 331)],
    ),
    *_family(
        "resnet",
        "caffe",
        32,
        [(f"ResNet{d}", f"resnet{d}", 224) for d in (50, 101, 152)],
    ),
    *_family(
        "resnet_v2",
        "tf",
        32,
        [(f"ResNet{d}V2", f"resnet{d}_v2", 224) for d in (50, 101, 152)],
    ),
    *_family("vgg16", "caffe", 32, [("VGG16", "vgg16", 224)]),
    *_family("vgg19", "caffe", 32, [("VGG19", "vgg19", 224)]),
    *_family("xception", "tf", 71, [("Xception", "xception", 299)]),
    *_family(
        "regnet",
        "none",
        32,
        [(f"RegNetX{s}", f"regnetx{s}", 224) for s in _REGNET_SIZES]
        + [(f"RegNetY{s}", f"regnety{s}", 224) for s in _REGNET_SIZES],
    ),
]

REGISTRY: dict[str, BaseSpec] = {spec.name: spec for spec in _SPECS}

#: The folder of the saved bases shipped with tltf (`tltf/assets`).
ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets"


@dataclasses.dataclass(frozen=True)
class ShippedBase:
    """A saved base shipped inside the package, loaded by a short name.

    Attributes:
        name: str. The short name, e.g. "demo".
        folder: str. Its folder under `ASSETS_DIR` (a `save_base` folder).
        description: str. One line on what it is, for `tltf bases`.
    """

    name: str
    folder: str
    description: str

    @property
    def path(self) -> Path:
        """The saved base's folder (it may be absent from a partial install)."""
        return ASSETS_DIR / self.folder


_SHIPPED: list[ShippedBase] = [
    ShippedBase(
        "demo",
        # `tltf.pretrain.DEMO_BASE.name`; a test keeps the two equal.
        "mobilenet_v3_small-64px-shapes_source-12000x5-s0-ba3555",
        "MobileNetV3Small @64 px pretrained on tltf's procedural shapes_source; "
        "ships with tltf, works offline",
    ),
]

SHIPPED_BASES: dict[str, ShippedBase] = {base.name: base for base in _SHIPPED}

#: The pointer to the shipped base that errors about unknown bases and failed
#: ImageNet downloads end with.
OFFLINE_BASE_HINT = (
    "Without a download, use the base shipped with tltf: "
    '`--base demo` on the command line, `tltf.build_model("demo", ...)` in Python.'
)


def shipped_base_path(name) -> Path | None:
    """The folder of the shipped base `name` ("demo"), or None for other names.

    Raises:
        ModelError: `name` is a shipped base, but this install lacks its folder.

    Example:

    >>> shipped_base_path("demo").name
    'mobilenet_v3_small-64px-shapes_source-12000x5-s0-ba3555'
    """
    shipped = SHIPPED_BASES.get(name) if isinstance(name, str) else None
    if shipped is None:
        return None
    if not shipped.path.is_dir():
        raise ModelError(
            f"The shipped base {name!r} is missing from this install: no folder "
            f"{str(shipped.path)!r}. Reinstall tltf, or rebuild it with `python -m "
            "tltf.pretrain --asset` (`make demo-base`)."
        )
    return shipped.path


def list_bases(filter: str = "*") -> list[str]:  # noqa: A002 - timm's name
    """Lists registry names, optionally filtered by a shell-style pattern.

    Args:
        filter: str. An `fnmatch` pattern such as "efficientnet*". Defaults to "*".

    Returns:
        The sorted matching names.

    Example:

    >>> tltf.list_bases("mobilenet*")
    ['mobilenet', 'mobilenet_v2', 'mobilenet_v3_large', 'mobilenet_v3_small']
    """
    return sorted(n for n in REGISTRY if fnmatch.fnmatch(n, filter.lower()))


def get_spec(name: str) -> BaseSpec:
    """Returns the registry entry `name`; also accepts constructor names.

    Shipped bases ("demo") are saved bases, not registry entries: `load_base`
    resolves them with `shipped_base_path`.

    Raises:
        UnknownBaseError: with the closest names, when `name` is unknown (or
            names a shipped base).
    """
    key = str(name).strip()
    if key in REGISTRY:
        return REGISTRY[key]
    by_constructor = {s.constructor_name.lower(): s for s in _SPECS}
    if key.lower() in by_constructor:
        return by_constructor[key.lower()]
    if key in SHIPPED_BASES:
        raise UnknownBaseError(
            f"{key!r} is a saved base shipped with tltf, not a registry entry: "
            f"load it with tltf.load_base({key!r}) or tltf.build_model({key!r}, ...)."
        )
    hint = suggest(key.lower(), [*SHIPPED_BASES, *REGISTRY])
    if not hint:
        hint = (
            f" Try 'demo' ({SHIPPED_BASES['demo'].description}): `--base demo`, "
            '`tltf.build_model("demo", ...)`.'
        )
    elif "'demo'" not in hint:
        hint += f" {OFFLINE_BASE_HINT}"
    raise UnknownBaseError(
        f"Unknown base {name!r}.{hint} "
        "See `tltf.list_bases()` (`tltf bases` on the command line) for the "
        "registry, or pass a keras.Model or the "
        "path of a saved base."
    )


@functools.cache
def constructor_arguments() -> tuple[str, ...]:
    """The arguments of the registry's Keras constructors, sorted.

    Those `load_base` sets itself (`include_top`, `input_shape`, `weights`) are
    left out. `build_model` and `probe_blocks` pass the others on to the
    constructor (`alpha=0.35`) and reject any other unknown keyword.
    """
    names = set()
    for spec in _SPECS:
        names.update(inspect.signature(spec.constructor).parameters)
    return tuple(sorted(names - {"include_top", "input_shape", "weights"}))


def applications_constructors() -> list[str]:
    """Names of the model constructors that `keras.applications` exports."""
    return sorted(
        n
        for n in dir(keras.applications)
        if n[:1].isupper() and callable(getattr(keras.applications, n))
    )
