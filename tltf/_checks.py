"""Argument checks shared by every module: one wording for each kind of mistake."""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable, Sequence
from numbers import Real

import keras
import numpy as np

from tltf.errors import ConfigError, suggest


def is_int(value) -> bool:
    """Whether `value` is an integer (Python or NumPy), and not a bool."""
    return isinstance(value, (int, np.integer)) and not isinstance(
        value, (bool, np.bool_)
    )


def is_number(value) -> bool:
    """Whether `value` is a real number (int or float), and not a bool."""
    return isinstance(value, Real) and not isinstance(value, (bool, np.bool_))


def check_image_size(image_size) -> tuple[int, int]:
    size = (image_size, image_size) if is_int(image_size) else image_size
    if (
        not isinstance(size, (tuple, list))
        or len(size) != 2
        or not all(is_int(s) and s > 0 for s in size)
    ):
        raise ConfigError(
            "Expected image_size as a positive int or a (height, width) pair, e.g. "
            f"224 or (224, 224). Received: image_size={image_size!r}"
        )
    return int(size[0]), int(size[1])


def check_choice(value, choices: Sequence[str], name: str) -> str:
    if value not in choices:
        raise ConfigError(
            f"Expected {name} to be one of {list(choices)}. Received: "
            f"{name}={value!r}.{suggest(str(value), choices)}"
        )
    return value


def check_positive_int(value, name: str) -> int:
    """`value` as an int; a ConfigError unless it is an integer >= 1 (not a bool)."""
    if not is_int(value) or value < 1:
        raise ConfigError(
            f"Expected {name} to be an int >= 1. Received: {name}={value!r}"
        )
    return int(value)


def named_arguments(function: Callable) -> tuple[str, ...]:
    """The names of `function`'s arguments, without `self`, `*args` and `**kwargs`."""
    return tuple(
        p.name
        for p in inspect.signature(function).parameters.values()
        if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    )


def check_keywords(kwargs, valid: Sequence[str], caller: str, takes: str = "") -> None:
    """Rejects a keyword that `caller` does not take, naming the closest one.

    For functions whose rarer options come in through `**kwargs`: `valid` is
    every name the function takes (its named arguments too, so that the
    suggestion can be any of them), and `takes` says in words what `**kwargs`
    accepts. The wording is `tltf.settings.split_kwargs`'s.

    Raises:
        ConfigError: for the first name not in `valid`, with the closest one.
    """
    unknown = [k for k in kwargs if k not in valid]
    if unknown:
        raise ConfigError(
            f"{caller}() got an unexpected argument {unknown[0]!r}."
            f"{suggest(unknown[0], valid, n=1)}{' ' + takes if takes else ''}"
        )


def take_renamed(kwargs: dict, old: str, new: str, value, caller: str):
    """The value of an argument that was renamed from `old` to `new`.

    Pops `old` from a function's `**kwargs`; if it was given, warns (a
    DeprecationWarning that names the new spelling) and returns it in place of
    `value`. Giving both is a ConfigError.
    """
    if old not in kwargs:
        return value
    if value is not None:
        raise ConfigError(
            f"{caller}() got both {old}= and {new}=. {old}= is the old name of "
            f"{new}=: pass {new}= only."
        )
    warnings.warn(
        f"{caller}({old}=...) is now {caller}({new}=...); the old name will be "
        "removed in a future release.",
        DeprecationWarning,
        stacklevel=3,
    )
    return kwargs.pop(old)


def callback_list(callbacks) -> list:
    """`callbacks=` as a list, checked before anything runs.

    Takes None, one Keras callback (Keras's own `fit` takes one too) or a list
    or tuple of them.

    Example:

    >>> len(callback_list(keras.callbacks.History()))
    1
    """
    if callbacks is None:
        return []
    if isinstance(callbacks, keras.callbacks.Callback):
        return [callbacks]
    if isinstance(callbacks, (str, bytes, dict)) or not hasattr(callbacks, "__iter__"):
        items = [callbacks]
    else:
        items = list(callbacks)
    for item in items:
        if not isinstance(item, keras.callbacks.Callback):
            hint = (
                " (a class, not an instance: add the parentheses)"
                if isinstance(item, type)
                else ""
            )
            raise ConfigError(
                "Expected callbacks to be a keras.callbacks.Callback or a list of "
                f"them. Received: {type(item).__name__} {item!r}{hint}. Pass "
                "e.g. callbacks=[keras.callbacks.EarlyStopping(patience=3)]."
            )
    return items
