"""Training-time penalties: L2-SP on the base, and the head's own L2.

L2-SP (Li et al. 2018, "Explicit inductive bias for transfer learning with
convolutional networks") adds `alpha * sum((w - w0) ** 2)` over the base's
unfrozen weights to the loss, where `w0` are the weights fine-tuning started
from. Stage 2 is pulled toward the pretrained solution instead of toward zero
(plain weight decay), so a small target set can adapt the base without
forgetting what it learned on the large one.

`fine_tune(..., regularize="l2sp")` (or `{"l2sp": alpha}`) uses it: the anchors
`w0` are the base's weights when `fine_tune` was called, so a resumed run is
pulled toward the same point as the original one (the model a resuming script
builds holds the same starting weights). The penalty is attached to the
variables only while `fine_tune` trains (`variable.regularizer`, which Keras adds
to the loss), and never to a layer's config: the saved model carries no trace
of it.

The head's L2 (`attach_head_l2`): a head that starts from a closed-form ridge
fit (`tltf.schedule.prepare_head`) is trained on with an L2 penalty on its
output kernel, so that its gradient steps keep the regularisation its start
was chosen with instead of fitting a few dozen images ever more closely. The
same rules apply: attached to the variable while `fine_tune` trains, never to
the layer's config.
"""

from __future__ import annotations

from collections.abc import Iterable

import keras
import numpy as np
from keras import ops

from tltf.errors import ConfigError

#: `regularize` names `fine_tune` accepts.
REGULARIZERS = ("l2sp",)
#: The default L2-SP strength (alpha of Li et al. 2018; Keras's `l2` scale).
DEFAULT_L2SP = 0.01


class StartingPoint(keras.regularizers.Regularizer):
    """`alpha * sum((w - w0) ** 2)`: an L2 penalty toward a variable's start.

    Args:
        anchor: array. The starting value `w0`.
        alpha: float. The strength. Defaults to 0.01.
    """

    def __init__(self, anchor, alpha: float = DEFAULT_L2SP):
        self.anchor = np.asarray(anchor)
        self.alpha = float(alpha)

    def __call__(self, x):
        anchor = ops.convert_to_tensor(self.anchor, dtype=x.dtype)
        return self.alpha * ops.sum(ops.square(x - anchor))

    def get_config(self) -> dict:
        raise NotImplementedError(
            "StartingPoint holds the starting weights; it is a training-time "
            "penalty and is never serialized."
        )


def check_regularize(value, name: str = "regularize") -> tuple[str, float] | None:
    """Validates `regularize`: None, "l2sp" or `{"l2sp": alpha}`.

    Returns:
        None, or `(name, strength)`.
    """
    if value is None:
        return None
    if isinstance(value, str) and value in REGULARIZERS:
        return value, DEFAULT_L2SP
    if isinstance(value, dict) and len(value) == 1:
        ((method, alpha),) = value.items()
        if (
            method in REGULARIZERS
            and isinstance(alpha, (int, float))
            and not isinstance(alpha, bool)
            and np.isfinite(alpha)
            and alpha >= 0
        ):
            return method, float(alpha)
    raise ConfigError(
        f"Expected {name} as None, 'l2sp' (strength 0.01) or {{'l2sp': alpha}} "
        f"with alpha >= 0. Received: {name}={value!r}"
    )


def starting_points(variables: Iterable) -> dict[str, np.ndarray]:
    """Copies of the variables' values, by path: the anchors of L2-SP."""
    return {v.path: np.array(v.numpy(), copy=True) for v in variables}


def attach_l2sp(variables: Iterable, anchors: dict, alpha: float) -> int:
    """Puts an L2-SP penalty on each variable that has an anchor.

    Args:
        variables: iterable of keras.Variable. The variables to pull back.
        anchors: dict. Starting values by variable path (`starting_points`).
        alpha: float. The strength.

    Returns:
        The number of variables that got the penalty.

    Raises:
        ConfigError: when a variable already has a regularizer of its own.
    """
    count = 0
    for variable in variables:
        anchor = anchors.get(variable.path)
        if anchor is None or isinstance(variable.regularizer, StartingPoint):
            continue
        if variable.regularizer is not None:
            raise ConfigError(
                f"Variable {variable.path!r} already has a regularizer "
                f"({variable.regularizer!r}); regularize='l2sp' would replace it. "
                "Remove it, or fine-tune without regularize."
            )
        variable.regularizer = StartingPoint(anchor, alpha)
        count += 1
    return count


def detach_l2sp(variables: Iterable) -> None:
    """Removes the L2-SP penalties `attach_l2sp` put on the variables."""
    for variable in variables:
        if isinstance(variable.regularizer, StartingPoint):
            variable.regularizer = None


class HeadL2(keras.regularizers.Regularizer):
    """`alpha * sum(w ** 2)` on the head's output kernel (`attach_head_l2`).

    Args:
        alpha: float. The strength, on the scale of the compiled loss.
    """

    def __init__(self, alpha: float):
        self.alpha = float(alpha)

    def __call__(self, x):
        return ops.cast(self.alpha, x.dtype) * ops.sum(ops.square(x))

    def get_config(self) -> dict:
        raise NotImplementedError(
            "HeadL2 is a training-time penalty of fine_tune and is never serialized."
        )


def _head_kernel(model: keras.Model):
    """The output kernel of a head from `build_model`, or None."""
    try:
        return model.get_layer("head_output").kernel
    except (ValueError, AttributeError):
        return None


def attach_head_l2(model: keras.Model, alpha: float) -> bool:
    """Puts an L2 penalty of strength `alpha` on the head's output kernel.

    Replaces an earlier `HeadL2`, never a regularizer of the user's own.

    Returns:
        Whether the penalty is on the kernel now.
    """
    kernel = _head_kernel(model)
    if kernel is None or not (alpha > 0 and np.isfinite(alpha)):
        return False
    if kernel.regularizer is not None and not isinstance(kernel.regularizer, HeadL2):
        return False
    kernel.regularizer = HeadL2(alpha)
    return True


def head_l2(model: keras.Model) -> float | None:
    """The strength of the head's `HeadL2`, or None when it has none."""
    kernel = _head_kernel(model)
    penalty = getattr(kernel, "regularizer", None)
    return penalty.alpha if isinstance(penalty, HeadL2) else None


def detach_head_l2(model: keras.Model) -> None:
    """Removes the penalty `attach_head_l2` put on the head's output kernel."""
    kernel = _head_kernel(model)
    if kernel is not None and isinstance(kernel.regularizer, HeadL2):
        kernel.regularizer = None
