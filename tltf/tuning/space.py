"""The search space: what the tuner searches, entry by entry.

`SearchSpace` checks its entries (a fixed value, a list of choices or a
`(low, high)` range) and declares them in a trial's `kt.HyperParameters`.
`HP_NAMES` are the names of the hyperparameters tltf declares; `STAGE2_HPS` and
`STAGE2_OPTIONS` are those (and the `fine_tune` options) that only change stage 2,
so that trials differing only in them share stage 1.
"""

from __future__ import annotations

import dataclasses
import math
from numbers import Real
from typing import Any

import keras_tuner as kt

from tltf.errors import ConfigError, suggest
from tltf.freezing import BN_POLICIES

#: Names of the hyperparameters tltf declares, by SearchSpace field.
HP_NAMES = {
    "unfreeze": "unfreeze_blocks",
    "fine_tune_lr": "fine_tune_lr",
    "head_lr": "head_lr",
    "head_dropout": "head_dropout",
    "head_units": "head_units",
    "bn": "bn",
    "lr_decay": "lr_decay",
    "unfreeze_offset": "unfreeze_offset",
}
#: Hyperparameters that only change stage 2: trials differing only in them share
#: stage 1. Every other hyperparameter (yours included) is part of the head key.
STAGE2_HPS = (
    "unfreeze_blocks",
    "unfreeze_offset",
    "fine_tune_lr",
    "bn",
    "lr_decay",
)
#: `fine_tune` options that only change stage 2.
STAGE2_OPTIONS = ("gradual_every",)


class _Choice(tuple):
    """A list of choices, stored as a tuple (distinct from a `(low, high)` range)."""

    def __repr__(self) -> str:
        return repr(list(self))


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    """What the tuner searches, entry by entry.

    Every entry takes a fixed value, a list (a choice among those values) or a
    2-tuple `(low, high)` (a range: log-uniform for learning rates, linear for
    dropout, integers for blocks and units). Fixed entries are still recorded as
    `hp.Fixed`, so the best hyperparameters are complete.

    Attributes:
        unfreeze: Blocks to unfreeze in stage 2, counted from the top of the
            base's block map: "all" (every depth from 0 to all blocks), an int, a
            list or a `(low, high)` range. Defaults to "all".
        fine_tune_lr: Stage-2 learning rate. Defaults to `(1e-6, 1e-3)` (log).
        head_lr: Stage-1 learning rate. Defaults to 1e-3.
        head_dropout: Head dropout. Defaults to `[0.0, 0.2]`: the rates that
            `HeadConfig(dropout="auto")` gives a linear head and a head with
            hidden layers.
        head_units: Width of one hidden Dense layer in the head; 0 means none.
            Defaults to `[0, 256]`.
        bn: BatchNorm policy in stage 2, see `tltf.freezing`. Defaults to
            "frozen".
        lr_decay: Discriminative-LR decay per block (1.0 or None: one rate).
            Defaults to None.
        unfreeze_offset: Frozen blocks left above the unfrozen ones: 0 unfreezes
            the top `unfreeze` blocks; 2 the `unfreeze` blocks below the top 2.
            A range or list searches *where* to fine-tune, not only how deep
            (surgical fine-tuning, Lee et al. 2023: input-level shifts are best
            served by the bottom blocks). Trials whose range would pass the
            bottom keep the blocks that exist. Declared only when not 0.
            Defaults to 0.

    Head choices multiply the stage-1 trainings: keep them few and discrete, so
    that most trials share a trained head.

    Example:

    >>> SearchSpace.from_dict({"unfreeze": (0, 6), "fine_tune_lr": 1e-5,
    ...                        "bn": ["frozen", "affine"]})
    """

    unfreeze: Any = "all"
    fine_tune_lr: Any = (1e-6, 1e-3)
    head_lr: Any = 1e-3
    head_dropout: Any = _Choice((0.0, 0.2))
    head_units: Any = _Choice((0, 256))
    bn: Any = "frozen"
    lr_decay: Any = None
    unfreeze_offset: Any = 0

    def __post_init__(self):
        # Lists are choices; keep them hashable inside the frozen dataclass.
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, list):
                object.__setattr__(self, field.name, _Choice(value))
        _check_entry("fine_tune_lr", self.fine_tune_lr, _positive)
        _check_entry("head_lr", self.head_lr, _positive)
        _check_entry("head_dropout", self.head_dropout, _dropout)
        _check_entry("head_units", self.head_units, _units)
        _check_entry("bn", self.bn, _bn, ranges=False)
        _check_entry("lr_decay", self.lr_decay, _decay)

    @classmethod
    def from_dict(cls, config: dict | SearchSpace | None) -> SearchSpace:
        """Builds a search space from a dict, rejecting unknown keys with hints."""
        if isinstance(config, SearchSpace):
            return config
        config = dict(config or {})
        fields = [f.name for f in dataclasses.fields(cls)]
        for key in config:
            if key not in fields:
                raise ConfigError(
                    f"Unknown search space entry {key!r}.{suggest(key, fields)} "
                    f"Valid entries: {fields}"
                )
        return cls(**config)

    def declare(self, hp: kt.HyperParameters, n_blocks: int) -> dict[str, Any]:
        """Declares the entries in `hp` and returns this trial's values."""
        unfreeze = self.unfreeze
        if unfreeze == "all":
            unfreeze = (0, n_blocks)
        _check_entry("unfreeze", unfreeze, _blocks(n_blocks))
        offset = self.unfreeze_offset
        _check_entry("unfreeze_offset", offset, _blocks(n_blocks - 1))
        return {
            "unfreeze_offset": (
                0
                if offset == 0
                else _declare(hp, HP_NAMES["unfreeze_offset"], offset, int)
            ),
            "unfreeze": _declare(hp, HP_NAMES["unfreeze"], unfreeze, int),
            "fine_tune_lr": _declare(
                hp, HP_NAMES["fine_tune_lr"], self.fine_tune_lr, float, "log"
            ),
            "head_lr": _declare(hp, HP_NAMES["head_lr"], self.head_lr, float, "log"),
            "head_dropout": _declare(
                hp, HP_NAMES["head_dropout"], self.head_dropout, float
            ),
            "head_units": _declare(hp, HP_NAMES["head_units"], self.head_units, int),
            "bn": _declare(hp, HP_NAMES["bn"], self.bn, str),
            "lr_decay": _declare(
                hp,
                HP_NAMES["lr_decay"],
                _none_to_one(self.lr_decay),
                float,
            ),
        }


def unfreeze_spec(values: dict, n_blocks: int) -> int | dict:
    """A trial's `unfreeze` for `fine_tune`: top blocks, or a range below the top.

    Args:
        values: dict. The trial's values (`SearchSpace.declare`).
        n_blocks: int. Blocks in the base.

    Returns:
        The top-k count when `unfreeze_offset` is 0, else `{"range": [first,
        last]}`: the `unfreeze` blocks below the `unfreeze_offset` top ones
        (fewer where the range would pass the bottom; 0 when none is left).
    """
    k, offset = int(values["unfreeze"]), int(values.get("unfreeze_offset", 0))
    if offset == 0:
        return k
    last = n_blocks - 1 - offset
    first = max(0, last - k + 1)
    return {"range": [first, last]} if k and last >= 0 else 0


def top_blocks(values: dict) -> int:
    """The top blocks a trial's stage 2 runs through (trained or frozen above)."""
    k = int(values["unfreeze"])
    return k + int(values.get("unfreeze_offset", 0)) if k else 0


def _none_to_one(value):
    if value is None:
        return 1.0
    if isinstance(value, _Choice):
        return _Choice(1.0 if v is None else v for v in value)
    return value


def _is_range(value) -> bool:
    return isinstance(value, tuple) and not isinstance(value, _Choice)


def _check_entry(name, value, check, ranges=True) -> None:
    if _is_range(value):
        if not ranges or len(value) != 2 or not value[0] <= value[1]:
            raise ConfigError(
                f"Expected search space entry {name} as a value, a list of choices"
                + (" or a (low, high) range with low <= high" if ranges else "")
                + f". Received: {name}={value!r}"
            )
        values = list(value)
    elif isinstance(value, _Choice):
        if not value:
            raise ConfigError(f"Expected at least one choice for {name}. Received: []")
        values = list(value)
    else:
        values = [value]
    for v in values:
        problem = check(v)
        if problem:
            raise ConfigError(
                f"Expected search space entry {name}: {problem}. Received: {name}={value!r}"
            )


def _number(v) -> bool:
    return isinstance(v, Real) and not isinstance(v, bool) and math.isfinite(v)


def _positive(v):
    return None if _number(v) and v > 0 else "positive numbers (e.g. 1e-4)"


def _dropout(v):
    return None if _number(v) and 0 <= v < 1 else "dropout rates in [0, 1)"


def _units(v):
    return (
        None
        if isinstance(v, int) and not isinstance(v, bool) and v >= 0
        else ("integers >= 0 (0: no hidden layer)")
    )


#: BatchNorm policies a search can try: "adapt" changes stage 1's features too,
#: which trials share, so it is not one of them.
_SEARCHED_BN = tuple(p for p in BN_POLICIES if p != "adapt")


def _bn(v):
    return None if v in _SEARCHED_BN else f"BatchNorm policies in {_SEARCHED_BN}"


def _decay(v):
    return None if v is None or (_number(v) and 0 < v <= 1) else "decays in (0, 1]"


def _blocks(n):
    def check(v):
        ok = isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= n
        return None if ok else f"block counts in [0, {n}] ({n} blocks in this base)"

    return check


def _declare(hp, name, spec, kind, sampling="linear"):
    if isinstance(spec, _Choice):
        return hp.Choice(name, [kind(v) for v in spec])
    if _is_range(spec):
        low, high = spec
        if low == high:
            return hp.Fixed(name, kind(low))
        if kind is int:
            # Widths are searched in steps of 32 (blocks in steps of 1).
            step = 32 if name == HP_NAMES["head_units"] and high - low >= 64 else 1
            return hp.Int(name, int(low), int(high), step=step)
        return hp.Float(name, float(low), float(high), sampling=sampling)
    return hp.Fixed(name, kind(spec))
