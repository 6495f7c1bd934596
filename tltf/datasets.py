"""Procedural, labelled RGB image datasets for offline transfer-learning work.

Every image is rasterised from scratch with vectorised NumPy (signed-distance
functions evaluated on a pixel grid, many images per array operation), so the
datasets need no download, are deterministic for a seed and are fast enough to
regenerate on the fly (a few thousand 64x64 images per second on one core).

Images combine rich low-level structure that a CNN has to learn (edges,
corners, curvature, thin and thick strokes, periodic textures) with nuisance
factors that make the tasks non-trivial: random position, size, rotation,
mirror, colours, textured backgrounds (gradients, stripes, checkerboards,
waves, smooth blobs), thin distractor lines, shading and pixel noise.

Tasks (see :data:`TASKS` and :func:`class_names`):

* ``"shapes_source"``: 16 geometric shape classes; the pre-training task.
* ``"shapes_target"``: 12 *different* shape classes (frames, letters, lens,
  teardrop, 4- and 6-point stars, ...). No label is shared with the source;
  transfer has to come from shared low-level features.
* ``"textures"``: 8 full-image texture classes.
* ``"counting"``: how many objects (1 to 6) are in the image.

The class names of all tasks are pairwise disjoint.

Example:
    >>> from tltf import datasets
    >>> x, y = datasets.make_images("shapes_source", per_class=2, image_size=32)
    >>> x.shape, x.dtype, y.dtype
    ((32, 32, 32, 3), dtype('uint8'), dtype('int32'))
    >>> datasets.class_names("shapes_target")[:3]
    ['arc', 'hollow_square', 'hollow_triangle']

Why about 1,000 lines: one signed-distance function per shape class (about 30,
five to ten lines each) and the rendering, styling and task code they share.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from tltf._checks import is_int
from tltf.errors import ConfigError, suggest

if TYPE_CHECKING:  # pragma: no cover
    import tensorflow as tf

__all__ = [
    "TASKS",
    "SOURCE_TASK",
    "TARGET_TASK",
    "MIN_IMAGE_SIZE",
    "class_names",
    "num_classes",
    "task_classes",
    "make_images",
    "make_dataset",
]

MIN_IMAGE_SIZE: int = 16
"""Smallest supported image side, in pixels."""

SOURCE_TASK: str = "shapes_source"
"""Name of the default pre-training (source) task."""

TARGET_TASK: str = "shapes_target"
"""Name of the default fine-tuning (target) task; disjoint from the source."""

# Pixels per rendering chunk (images * H * W). Bounds peak memory to a few tens
# of MB of float32 temporaries; results do not depend on it.
_CHUNK_PIXELS = 1 << 16

_F = np.float32
_PI = _F(np.pi)
_TWO_PI = _F(2.0 * np.pi)

Array = np.ndarray
SdfFn = Callable[[Array, Array, Array], Array]


# ---------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------


def _col(a: Array) -> Array:
    """(B,) -> (B, 1, 1) for broadcasting against (B, H, W)."""
    return a[:, None, None]


def _box(x: Array, y: Array, x0: Any, x1: Any, y0: Any, y1: Any) -> Array:
    """Signed distance (exact inside, bound outside) to an axis-aligned box."""
    return np.maximum(np.maximum(x0 - x, x - x1), np.maximum(y0 - y, y - y1))


def _regular_halfplanes(
    n: int, radius: float, phase: float = 0.0
) -> list[tuple[float, float, float]]:
    """Outward unit normals and offsets of a regular n-gon (circumradius ``radius``)."""
    apothem = radius * np.cos(np.pi / n)
    out = []
    for i in range(n):
        a = phase + (2 * i + 1) * np.pi / n  # edge-normal angle (between vertices)
        out.append((float(np.cos(a)), float(np.sin(a)), float(apothem)))
    return out


def _convex(x: Array, y: Array, planes: Sequence[tuple[float, float, float]]) -> Array:
    """Max over half-planes ``nx*x + ny*y - off``: the SDF of a convex polygon."""
    d = None
    for nx, ny, off in planes:
        dk = x * _F(nx) + y * _F(ny) - _F(off)
        d = dk if d is None else np.maximum(d, dk, out=d)
    assert d is not None
    return d


def _frame(d: Array, t: Array) -> Array:
    """Turn a filled SDF into an outline of inward thickness ``t``."""
    h = t * 0.5
    return np.abs(d + h) - h


def _star(x: Array, y: Array, n: int, k: Array) -> Array:
    """n-pointed star with outer radius 1 and inner radius ``k`` (B,1,1)."""
    theta = np.arctan2(y, x)
    sector = _F(2.0 * np.pi / n)
    phi = np.abs(np.mod(theta + sector * 0.5, sector) - sector * 0.5)
    r = np.sqrt(x * x + y * y)
    qx = r * np.cos(phi)
    qy = r * np.sin(phi)
    c, s = _F(np.cos(np.pi / n)), _F(np.sin(np.pi / n))
    nx = k * s
    ny = 1.0 - k * c
    norm = np.sqrt(nx * nx + ny * ny)
    return ((qx - 1.0) * nx + qy * ny) / norm


# ---------------------------------------------------------------------------
# Shape signed-distance functions.
#
# Each takes local coordinates x, y (B, H, W) float32, in which the shape has a
# nominal radius of about 1, and per-image extra parameters e (B, 3) float32.
# They return an approximate signed distance in local units (negative inside).
# ---------------------------------------------------------------------------

_TRI = _regular_halfplanes(3, 1.05, phase=np.pi / 2)
_TRI_BIG = _regular_halfplanes(3, 1.12, phase=np.pi / 2)
_PENT = _regular_halfplanes(5, 1.0, phase=np.pi / 2)
_HEX = _regular_halfplanes(6, 1.0)
_SQRT2 = _F(np.sqrt(2.0))


def _sd_circle(x: Array, y: Array, e: Array) -> Array:
    return np.sqrt(x * x + y * y) - 1.0


def _sd_ellipse(x: Array, y: Array, e: Array) -> Array:
    b = _col(e[:, 0])
    yb = y / b
    yb2 = yb / b
    k0 = np.sqrt(x * x + yb * yb)
    k1 = np.sqrt(x * x + yb2 * yb2)
    # First-order distance f/|grad f|; the epsilons keep the centre inside.
    return (k0 - 1.0) * (k0 + 1e-4) / (k1 + 1e-4)


def _sd_ring(x: Array, y: Array, e: Array) -> Array:
    t = _col(e[:, 0])
    return np.abs(np.sqrt(x * x + y * y) - (1.0 - t)) - t


def _sd_semicircle(x: Array, y: Array, e: Array) -> Array:
    yy = y + 0.45
    return np.maximum(np.sqrt(x * x + yy * yy) - 1.05, -yy)


def _sd_crescent(x: Array, y: Array, e: Array) -> Array:
    xx = x + 0.25
    o, r2 = _col(e[:, 0]), _col(e[:, 1])
    d1 = np.sqrt(xx * xx + y * y) - 1.0
    dx = xx - o
    d2 = np.sqrt(dx * dx + y * y) - r2
    return np.maximum(d1, -d2)


def _sd_triangle(x: Array, y: Array, e: Array) -> Array:
    return _convex(x, y, _TRI)


def _sd_square(x: Array, y: Array, e: Array) -> Array:
    return np.maximum(np.abs(x), np.abs(y)) - 0.8


def _sd_rectangle(x: Array, y: Array, e: Array) -> Array:
    return np.maximum(np.abs(x) - 1.0, np.abs(y) - _col(e[:, 0]))


def _sd_diamond(x: Array, y: Array, e: Array) -> Array:
    k = _col(e[:, 0])
    inv = 1.0 / k
    return (np.abs(x) + np.abs(y) * inv - 1.0) / np.sqrt(1.0 + inv * inv)


def _sd_pentagon(x: Array, y: Array, e: Array) -> Array:
    return _convex(x, y, _PENT)


def _sd_hexagon(x: Array, y: Array, e: Array) -> Array:
    return _convex(x, y, _HEX)


def _sd_star5(x: Array, y: Array, e: Array) -> Array:
    return _star(x, y, 5, _col(e[:, 0]))


def _sd_cross(x: Array, y: Array, e: Array) -> Array:
    w = _col(e[:, 0])
    ax, ay = np.abs(x), np.abs(y)
    return np.minimum(np.maximum(ax - 1.0, ay - w), np.maximum(ax - w, ay - 1.0))


def _sd_arrow(x: Array, y: Array, e: Array) -> Array:
    w, h = _col(e[:, 0]), _col(e[:, 1])
    ay = np.abs(y)
    shaft = np.maximum(np.maximum(-1.0 - x, x - 0.1), ay - w)
    norm = np.sqrt(h * h + _F(0.95 * 0.95))
    head = np.maximum(0.05 - x, ((x - 1.0) * h + ay * 0.95) / norm)
    return np.minimum(shaft, head)


def _sd_heart(x: Array, y: Array, e: Array) -> Array:
    a = _F(0.8)
    ax = np.abs(x)
    yy = y - 0.083
    dia = (ax + np.abs(yy) - a) / _SQRT2
    cx = ax - a * 0.5
    cy = yy + a * 0.5
    lobe = np.sqrt(cx * cx + cy * cy) - a / _SQRT2
    return np.minimum(dia, lobe)


def _sd_bowtie(x: Array, y: Array, e: Array) -> Array:
    h = _col(e[:, 0])
    ax = np.abs(x)
    norm = np.sqrt(h * h + _F(1.06 * 1.06))
    edge = (-(ax + 0.06) * h + np.abs(y) * 1.06) / norm
    return np.maximum(ax - 1.0, edge)


# --- target shapes -----------------------------------------------------------


def _sd_arc(x: Array, y: Array, e: Array) -> Array:
    t = _col(e[:, 0])
    yy = y + 0.5
    return np.maximum(np.abs(np.sqrt(x * x + yy * yy) - (1.0 - t)) - t, -yy)


def _sd_hollow_square(x: Array, y: Array, e: Array) -> Array:
    return _frame(np.maximum(np.abs(x), np.abs(y)) - 0.82, _col(e[:, 0]))


def _sd_hollow_triangle(x: Array, y: Array, e: Array) -> Array:
    return _frame(_convex(x, y, _TRI_BIG), _col(e[:, 0]))


def _sd_lens(x: Array, y: Array, e: Array) -> Array:
    o = _col(e[:, 0])
    xx = x * _F(1 / 1.1)
    yy = y * _F(1 / 1.1)
    x2 = xx * xx
    up, dn = yy - o, yy + o
    return (np.maximum(np.sqrt(x2 + up * up), np.sqrt(x2 + dn * dn)) - 1.0) * 1.1


def _sd_teardrop(x: Array, y: Array, e: Array) -> Array:
    r = _col(e[:, 0])
    xc = r - 1.0
    px = x - xc
    length = 1.0 - xc
    sa = r / length
    ca = np.sqrt(1.0 - sa * sa)
    ay = np.abs(y)
    cone = np.maximum((px - length) * sa + ay * ca, r * sa - px)
    return np.minimum(np.sqrt(px * px + y * y) - r, cone)


def _sd_trapezoid(x: Array, y: Array, e: Array) -> Array:
    tw, h = _col(e[:, 0]), _col(e[:, 1])
    ax = np.abs(x)
    nx, ny = 2.0 * h, 1.0 - tw
    norm = np.sqrt(nx * nx + ny * ny)
    slant = ((ax - 1.0) * nx + (y + h) * ny) / norm
    return np.maximum(np.abs(y) - h, slant)


def _sd_parallelogram(x: Array, y: Array, e: Array) -> Array:
    sk, h = _col(e[:, 0]), _col(e[:, 1])
    norm = np.sqrt(h * h + sk * sk)
    right = ((x - 0.8) * h - y * sk) / norm
    left = ((-x - 0.8) * h + y * sk) / norm
    return np.maximum(np.abs(y) - h, np.maximum(right, left))


def _sd_l_shape(x: Array, y: Array, e: Array) -> Array:
    w = _col(e[:, 0])
    a = _box(x, y, -0.8, -0.8 + w, -0.85, 0.85)
    b = _box(x, y, -0.8, 0.8, 0.85 - w, 0.85)
    return np.minimum(a, b)


def _sd_t_shape(x: Array, y: Array, e: Array) -> Array:
    w = _col(e[:, 0])
    a = _box(x, y, -0.85, 0.85, -0.85, -0.85 + w)
    b = _box(x, y, -0.5 * w, 0.5 * w, -0.85, 0.85)
    return np.minimum(a, b)


def _sd_u_shape(x: Array, y: Array, e: Array) -> Array:
    w = _col(e[:, 0])
    a = _box(np.abs(x), y, 0.8 - w, 0.8, -0.8, 0.8)
    b = _box(x, y, -0.8, 0.8, 0.8 - w, 0.8)
    return np.minimum(a, b)


def _sd_star4(x: Array, y: Array, e: Array) -> Array:
    return _star(x, y, 4, _col(e[:, 0]))


def _sd_star6(x: Array, y: Array, e: Array) -> Array:
    return _star(x, y, 6, _col(e[:, 0]))


@dataclass(frozen=True)
class _Shape:
    """A shape class: SDF, uniform ranges of its extra parameters, aspect jitter."""

    sdf: SdfFn
    extras: tuple[tuple[float, float], ...] = ()
    aspect: tuple[float, float] = (0.87, 1.0)


_SOURCE_SHAPES: dict[str, _Shape] = {
    "circle": _Shape(_sd_circle, aspect=(0.94, 1.0)),
    "ellipse": _Shape(_sd_ellipse, ((0.42, 0.66),), aspect=(0.95, 1.0)),
    "ring": _Shape(_sd_ring, ((0.14, 0.24),), aspect=(0.92, 1.0)),
    "semicircle": _Shape(_sd_semicircle),
    "crescent": _Shape(_sd_crescent, ((0.35, 0.55), (0.78, 0.92))),
    "triangle": _Shape(_sd_triangle),
    "square": _Shape(_sd_square, aspect=(0.9, 1.0)),
    "rectangle": _Shape(_sd_rectangle, ((0.38, 0.55),), aspect=(0.95, 1.0)),
    "diamond": _Shape(_sd_diamond, ((0.5, 0.66),), aspect=(0.95, 1.0)),
    "pentagon": _Shape(_sd_pentagon, aspect=(0.92, 1.0)),
    "hexagon": _Shape(_sd_hexagon, aspect=(0.92, 1.0)),
    "star5": _Shape(_sd_star5, ((0.38, 0.5),)),
    "cross": _Shape(_sd_cross, ((0.2, 0.3),)),
    "arrow": _Shape(_sd_arrow, ((0.13, 0.2), (0.45, 0.6))),
    "heart": _Shape(_sd_heart),
    "bowtie": _Shape(_sd_bowtie, ((0.5, 0.7),)),
}

_TARGET_SHAPES: dict[str, _Shape] = {
    "arc": _Shape(_sd_arc, ((0.14, 0.22),), aspect=(0.92, 1.0)),
    "hollow_square": _Shape(_sd_hollow_square, ((0.2, 0.3),), aspect=(0.9, 1.0)),
    "hollow_triangle": _Shape(_sd_hollow_triangle, ((0.2, 0.28),)),
    "lens": _Shape(_sd_lens, ((0.45, 0.6),), aspect=(0.95, 1.0)),
    "teardrop": _Shape(_sd_teardrop, ((0.42, 0.55),)),
    "trapezoid": _Shape(_sd_trapezoid, ((0.3, 0.5), (0.45, 0.6))),
    "parallelogram": _Shape(_sd_parallelogram, ((0.3, 0.45), (0.4, 0.55))),
    "l_shape": _Shape(_sd_l_shape, ((0.32, 0.44),)),
    "t_shape": _Shape(_sd_t_shape, ((0.32, 0.44),)),
    "u_shape": _Shape(_sd_u_shape, ((0.32, 0.42),)),
    "star4": _Shape(_sd_star4, ((0.3, 0.42),)),
    "star6": _Shape(_sd_star6, ((0.45, 0.56),)),
}

_TEXTURES: tuple[str, ...] = (
    "stripes",
    "checkerboard",
    "polka_dots",
    "grid",
    "waves",
    "zigzag",
    "concentric",
    "spiral",
)

_MAX_COUNT = 6
_COUNTS: tuple[str, ...] = tuple(f"count_{i}" for i in range(1, _MAX_COUNT + 1))

_TASK_CLASSES: dict[str, tuple[str, ...]] = {
    "shapes_source": tuple(_SOURCE_SHAPES),
    "shapes_target": tuple(_TARGET_SHAPES),
    "textures": _TEXTURES,
    "counting": _COUNTS,
}

TASKS: tuple[str, ...] = tuple(_TASK_CLASSES)
"""Names of the available tasks."""


# ---------------------------------------------------------------------------
# Public metadata API
# ---------------------------------------------------------------------------


def _check_task(task: str) -> str:
    if not isinstance(task, str) or task not in _TASK_CLASSES:
        hint = suggest(task, TASKS) if isinstance(task, str) else ""
        raise ConfigError(
            f"Unknown task {task!r}; available tasks: {', '.join(TASKS)}.{hint}"
        )
    return task


def class_names(task: str) -> list[str]:
    """Lists the class names of a task, in label order.

    Args:
        task: One of :data:`TASKS`.

    Returns:
        A new list; index ``i`` is the name of integer label ``i``.

    Raises:
        ValueError: If ``task`` is unknown (a ``tltf.errors.ConfigError``).

    Example:
        >>> class_names("counting")
        ['count_1', 'count_2', 'count_3', 'count_4', 'count_5', 'count_6']
    """
    return list(_TASK_CLASSES[_check_task(task)])


def num_classes(task: str) -> int:
    """Returns the number of classes of a task.

    Example:
        >>> num_classes("shapes_source")
        16
    """
    return len(_TASK_CLASSES[_check_task(task)])


def task_classes() -> dict[str, list[str]]:
    """Lists the classes of every task.

    Class names are pairwise disjoint across tasks, so e.g. the target task
    shares no label with the source task.

    Example:
        >>> sorted(task_classes())
        ['counting', 'shapes_source', 'shapes_target', 'textures']
    """
    return {t: list(c) for t, c in _TASK_CLASSES.items()}


# ---------------------------------------------------------------------------
# Argument validation
# ---------------------------------------------------------------------------


def _check_size(image_size: int | Sequence[int]) -> tuple[int, int]:
    if is_int(image_size):
        hw = (int(image_size), int(image_size))  # type: ignore[arg-type]
    elif (
        isinstance(image_size, (tuple, list))
        and len(image_size) == 2
        and all(is_int(v) for v in image_size)
    ):
        hw = (int(image_size[0]), int(image_size[1]))
    else:
        raise ConfigError(
            f"image_size must be an int or a (height, width) pair of ints, got {image_size!r}."
        )
    if min(hw) < MIN_IMAGE_SIZE:
        raise ConfigError(
            f"image_size must be >= {MIN_IMAGE_SIZE} pixels per side, got {image_size!r}."
        )
    return hw


def _labels_for(
    n: int | None, per_class: int | None, n_cls: int, rng: np.random.Generator
) -> Array:
    if (n is None) == (per_class is None):
        raise ConfigError(
            "Pass exactly one of n (total images) or per_class (images per class)."
        )
    if per_class is not None:
        if not is_int(per_class) or per_class < 1:
            raise ConfigError(f"per_class must be a positive int, got {per_class!r}.")
        counts = np.full(n_cls, int(per_class), dtype=np.int64)
    else:
        if not is_int(n) or n < 1:  # type: ignore[operator]
            raise ConfigError(f"n must be a positive int, got {n!r}.")
        base, extra = divmod(int(n), n_cls)  # type: ignore[arg-type]
        counts = np.full(n_cls, base, dtype=np.int64)
        counts[rng.permutation(n_cls)[:extra]] += 1
    labels = np.repeat(np.arange(n_cls, dtype=np.int32), counts)
    return labels[rng.permutation(labels.size)]


# ---------------------------------------------------------------------------
# Parameter sampling (all randomness except pixel noise is drawn up-front, so
# the geometry of image i does not depend on the image size or chunking).
# ---------------------------------------------------------------------------

# Background kinds: 0 flat, 1 linear gradient, 2 radial gradient, 3 stripes,
# 4 checkerboard, 5 smooth value-noise blobs, 6 waves.
_BG_PROBS = np.array([0.1, 0.2, 0.1, 0.15, 0.15, 0.15, 0.15])
_BLOB_GRID = 6


def _u(
    rng: np.random.Generator, lo: float, hi: float, n: int | tuple[int, ...]
) -> Array:
    return rng.uniform(lo, hi, n).astype(_F)


def _sample_colours_apart(
    rng: np.random.Generator, ref: Array, min_dist: float
) -> Array:
    """Random RGB colours at least ``min_dist`` (Euclidean) from ``ref`` (N, 3)."""
    n = ref.shape[0]
    out = rng.uniform(0, 255, (n, 3)).astype(_F)
    for _ in range(12):
        bad = np.linalg.norm(out - ref, axis=1) < min_dist
        if not bad.any():
            break
        out[bad] = rng.uniform(0, 255, (int(bad.sum()), 3))
    bad = np.linalg.norm(out - ref, axis=1) < min_dist
    out[bad] = np.where(ref[bad] > 127.5, 0.0, 255.0)  # fall back to max contrast
    return out


def _sample_scene(
    rng: np.random.Generator, n: int, ext: tuple[float, float], *, lines: bool
) -> dict[str, Array]:
    p: dict[str, Array] = {}
    p["bg_kind"] = rng.choice(len(_BG_PROBS), size=n, p=_BG_PROBS).astype(np.int8)
    c1 = rng.uniform(0, 255, (n, 3)).astype(_F)
    # Background contrast stays moderate so the foreground remains the salient object.
    delta = rng.normal(0, 1, (n, 3)).astype(_F)
    delta *= (_u(rng, 15, 75, n) / np.maximum(np.linalg.norm(delta, axis=1), 1e-3))[
        :, None
    ]
    c2 = np.clip(c1 + delta, 0, 255)
    p["bg_c1"], p["bg_c2"] = c1, c2
    p["bg_angle"] = _u(rng, 0, 2 * np.pi, n)
    p["bg_freq"] = _u(rng, 4.0, 18.0, n)
    p["bg_phase"] = _u(rng, 0, 2 * np.pi, n)
    p["bg_sharp"] = _u(rng, 0.5, 3.0, n)
    p["bg_gain"] = _u(rng, 0.4, 1.0, n)
    p["bg_cx"] = _u(rng, -ext[1], ext[1], n)
    p["bg_cy"] = _u(rng, -ext[0], ext[0], n)
    p["bg_blobs"] = rng.uniform(0, 1, (n, _BLOB_GRID, _BLOB_GRID)).astype(_F)
    p["fg"] = _sample_colours_apart(rng, 0.5 * (c1 + c2), 90.0)
    p["shade"] = _u(rng, 0.0, 0.25, n)
    p["noise"] = _u(rng, 0.0, 14.0, n)
    if lines:
        k = 3
        p["n_lines"] = np.where(
            rng.random(n) < 0.45, rng.integers(1, k + 1, n), 0
        ).astype(np.int8)
        ends = rng.uniform(-1, 1, (n, k, 4)).astype(_F)
        ends[..., 0::2] *= ext[1]
        ends[..., 1::2] *= ext[0]
        p["line_ends"] = ends
        p["line_w"] = _u(rng, 0.3, 0.9, (n, k))  # half-width in pixels
        p["line_col"] = rng.uniform(0, 255, (n, k, 3)).astype(_F)
    return p


def _sample_shapes(
    rng: np.random.Generator,
    labels: Array,
    shapes: Sequence[_Shape],
    ext: tuple[float, float],
) -> dict[str, Array]:
    n = labels.size
    p = _sample_scene(rng, n, ext, lines=True)
    scale = _u(rng, 0.42, 0.8, n)
    aspect = np.empty(n, _F)
    extras = np.zeros((n, 3), _F)
    for c, spec in enumerate(shapes):
        idx = np.flatnonzero(labels == c)
        if idx.size == 0:
            continue
        aspect[idx] = rng.uniform(*spec.aspect, idx.size)
        for j, (lo, hi) in enumerate(spec.extras):
            extras[idx, j] = rng.uniform(lo, hi, idx.size)
    reach = scale * 1.12 + 0.02
    p["cx"] = (rng.uniform(-1, 1, n) * np.maximum(ext[1] - reach, 0)).astype(_F)
    p["cy"] = (rng.uniform(-1, 1, n) * np.maximum(ext[0] - reach, 0)).astype(_F)
    p["scale"] = scale
    p["aspect"] = aspect
    p["rot"] = _u(rng, 0, 2 * np.pi, n)
    p["flip"] = np.where(rng.random(n) < 0.5, -1.0, 1.0).astype(_F)
    p["extras"] = extras
    return p


def _sample_textures(
    rng: np.random.Generator, labels: Array, ext: tuple[float, float]
) -> dict[str, Array]:
    n = labels.size
    p = _sample_scene(rng, n, ext, lines=False)
    c1 = p["bg_c1"]
    p["tex_c2"] = _sample_colours_apart(rng, c1, 70.0)
    p["tex_angle"] = _u(rng, 0, 2 * np.pi, n)
    p["tex_cycles"] = _u(rng, 2.5, 6.5, n)  # periods across the shorter side
    p["tex_phase"] = _u(rng, 0, 2 * np.pi, n)
    p["tex_sharp"] = _u(rng, 0.8, 4.0, n)
    p["tex_a"] = _u(rng, 0.0, 1.0, n)  # class-specific shape parameter
    p["tex_b"] = _u(rng, 0.0, 1.0, n)
    p["tex_cx"] = _u(rng, -0.6, 0.6, n)
    p["tex_cy"] = _u(rng, -0.6, 0.6, n)
    return p


def _sample_counting(
    rng: np.random.Generator, labels: Array, ext: tuple[float, float]
) -> dict[str, Array]:
    n = labels.size
    p = _sample_scene(rng, n, ext, lines=False)
    k = _MAX_COUNT
    radius = _u(rng, 0.1, 0.19, (n, k))
    centres = np.zeros((n, k, 2), _F)
    valid = np.zeros((n, k), bool)
    lim = np.array([ext[1], ext[0]], _F)
    cand = rng.uniform(-1, 1, (n, 48, 2)).astype(_F)
    for i in range(n):
        want = int(labels[i]) + 1
        got = 0
        r = radius[i]
        for c in cand[i]:
            if got == want:
                break
            pos = c * (lim - r[got] - 0.03)
            if got:
                dist = np.sqrt(((centres[i, :got] - pos) ** 2).sum(axis=1))
                if np.any(dist < r[:got] + r[got] + 0.08):
                    continue
            centres[i, got] = pos
            valid[i, got] = True
            got += 1
        while got < want:  # extremely rare: shrink and place on a fallback lattice
            r[got] = 0.08
            centres[i, got] = ((got % 3) - 1) * 0.6, ((got // 3) - 0.5) * 0.9
            valid[i, got] = True
            got += 1
    p["obj_r"] = radius
    p["obj_c"] = centres
    p["obj_valid"] = valid
    p["obj_square"] = rng.random((n, k)) < 0.5
    p["obj_rot"] = _u(rng, 0, 2 * np.pi, (n, k))
    p["obj_tint"] = _u(rng, -25, 25, (n, k, 3))
    return p


# ---------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Grid:
    u: Array  # (1, 1, W) x-coordinates of pixel centres
    v: Array  # (1, H, 1) y-coordinates of pixel centres (down)
    ppu: float  # pixels per unit
    blob_idx: tuple[Array, Array, Array, Array, Array, Array]

    @staticmethod
    def make(h: int, w: int) -> _Grid:
        m = min(h, w)
        half = m / 2.0
        u = ((np.arange(w) + 0.5 - w / 2.0) / half).astype(_F)[None, None, :]
        v = ((np.arange(h) + 0.5 - h / 2.0) / half).astype(_F)[None, :, None]

        def lin(size: int) -> tuple[Array, Array, Array]:
            g = (np.arange(size) + 0.5) / size * (_BLOB_GRID - 1)
            i0 = np.minimum(np.floor(g).astype(np.intp), _BLOB_GRID - 2)
            t = (g - i0).astype(_F)
            t = t * t * (3.0 - 2.0 * t)  # smoothstep for smooth blobs
            return i0, i0 + 1, t

        return _Grid(u, v, half, lin(h) + lin(w))


def _rotated(grid: _Grid, angle: Array) -> tuple[Array, Array]:
    c, s = _col(np.cos(angle)), _col(np.sin(angle))
    return grid.u * c + grid.v * s, grid.v * c - grid.u * s


def _background_mix(p: dict[str, Array], grid: _Grid, b: int, h: int, w: int) -> Array:
    """Mixing weight in [0, 1] between the two background colours, (B, H, W)."""
    m = np.zeros((b, h, w), _F)
    kind = p["bg_kind"]
    for k in range(1, len(_BG_PROBS)):
        idx = np.flatnonzero(kind == k)
        if idx.size == 0:
            continue
        q = {
            key: p[key][idx]
            for key in ("bg_angle", "bg_freq", "bg_phase", "bg_sharp", "bg_gain")
        }
        if k == 1:  # linear gradient
            ur, _ = _rotated(grid, q["bg_angle"])
            val = 0.5 + 0.5 * _col(q["bg_gain"]) * ur
        elif k == 2:  # radial gradient
            dx = grid.u - _col(p["bg_cx"][idx])
            dy = grid.v - _col(p["bg_cy"][idx])
            val = np.sqrt(dx * dx + dy * dy) * (0.6 * _col(q["bg_gain"]))
        elif k == 3:  # stripes
            ur, _ = _rotated(grid, q["bg_angle"])
            val = 0.5 + _col(q["bg_sharp"]) * np.sin(
                ur * _col(q["bg_freq"]) + _col(q["bg_phase"])
            )
        elif k == 4:  # checkerboard
            ur, vr = _rotated(grid, q["bg_angle"])
            f = _col(q["bg_freq"]) * 0.6
            val = 0.5 + _col(q["bg_sharp"]) * np.sin(ur * f) * np.sin(
                vr * f + _col(q["bg_phase"])
            )
        elif k == 5:  # smooth blobs: bilinear (smoothstep) upsampling of a coarse grid
            g = p["bg_blobs"][idx]
            i0, i1, ty, j0, j1, tx = grid.blob_idx
            top = g[:, i0][:, :, j0] * (1.0 - tx) + g[:, i0][:, :, j1] * tx
            bot = g[:, i1][:, :, j0] * (1.0 - tx) + g[:, i1][:, :, j1] * tx
            val = top * (1.0 - ty[:, None]) + bot * ty[:, None]
        else:  # waves
            ur, vr = _rotated(grid, q["bg_angle"])
            f = _col(q["bg_freq"])
            warp = (0.15 * _col(q["bg_gain"])) * np.sin(
                vr * (f * 0.35) + _col(q["bg_phase"])
            )
            val = 0.5 + _col(q["bg_sharp"]) * np.sin((ur + warp) * f)
        m[idx] = np.clip(val, 0.0, 1.0)
    return m


def _blend(
    img: Array, alpha: Array, colour: Array, weight: Array | None = None
) -> None:
    """In place: ``img = img * (1 - alpha) + colour * (weight or alpha)``.

    ``img`` is channel-first (B, 3, H, W) so that per-pixel maps broadcast over
    an outer axis (long inner loops); ``alpha`` and ``weight`` (B, H, W)
    (``alpha`` is overwritten); ``colour`` (B, 3).
    """
    w = alpha * weight if weight is not None else alpha.copy()
    np.subtract(1.0, alpha, out=alpha)
    img *= alpha[:, None]
    img += w[:, None] * colour[:, :, None, None]


def _fill(img: Array, m: Array, c1: Array, c2: Array) -> None:
    """In place: ``img = c1 + (c2 - c1) * m``; colours (B, 3), m (B, H, W)."""
    np.multiply(m[:, None], (c2 - c1)[:, :, None, None], out=img)
    img += c1[:, :, None, None]


def _draw_lines(img: Array, p: dict[str, Array], grid: _Grid) -> None:
    # Within a class segment images are sorted by descending line count, so
    # the images with more than j lines form a prefix.
    n_lines = p["n_lines"]
    for j in range(p["line_ends"].shape[1]):
        k = int(np.count_nonzero(n_lines > j))
        if k == 0:
            break
        e = p["line_ends"][:k, j]
        ax, ay, bx, by = (_col(e[:, i]) for i in range(4))
        ex, ey = bx - ax, by - ay
        inv = 1.0 / np.maximum(ex * ex + ey * ey, 1e-6)
        px, py = grid.u - ax, grid.v - ay
        t = np.clip((px * ex + py * ey) * inv, 0.0, 1.0)
        dx, dy = px - t * ex, py - t * ey
        d_px = np.sqrt(dx * dx + dy * dy) * _F(grid.ppu) - _col(p["line_w"][:k, j])
        alpha = np.clip(0.5 - d_px, 0.0, 1.0, out=d_px)
        _blend(img[:k], alpha, p["line_col"][:k, j])


def _draw_shape(img: Array, p: dict[str, Array], spec: _Shape, grid: _Grid) -> None:
    s, asp = p["scale"], p["aspect"]
    dx = grid.u - _col(p["cx"])
    dy = grid.v - _col(p["cy"])
    cr, sr = _col(np.cos(p["rot"])), _col(np.sin(p["rot"]))
    x = (dx * cr + dy * sr) * _col(p["flip"] / s)
    y = (dy * cr - dx * sr) * _col(1.0 / (s * asp))
    d = spec.sdf(x, y, p["extras"])
    # Local units -> pixels (geometric-mean scale for the mild anisotropy).
    d *= _col(s * np.sqrt(asp) * _F(grid.ppu))
    alpha = np.clip(0.5 - d, 0.0, 1.0, out=d)
    shade = np.clip(x, -1.2, 1.2, out=x)
    shade *= _col(p["shade"])
    shade += 1.0
    _blend(img, alpha, p["fg"], shade)


def _texture_mix(p: dict[str, Array], name: str, grid: _Grid) -> Array:
    ur, vr = _rotated(grid, p["tex_angle"])
    f = _col(p["tex_cycles"]) * _PI  # rad per unit (shorter side spans 2 units)
    ph = _col(p["tex_phase"])
    a, bb = _col(p["tex_a"]), _col(p["tex_b"])
    if name == "stripes":
        s = np.sin(ur * f + ph)
    elif name == "checkerboard":
        s = np.sin(ur * f + ph) * np.sin(vr * f)
        s = np.sign(s) * np.sqrt(np.abs(s))
    elif name in ("polka_dots", "grid"):
        cu = ur * (f / _TWO_PI) + ph / _TWO_PI
        cv = vr * (f / _TWO_PI)
        du = cu - np.floor(cu) - 0.5
        dv = cv - np.floor(cv) - 0.5
        if name == "polka_dots":  # dots of radius 0.18..0.32 cells
            s = ((0.18 + 0.14 * a) - np.sqrt(du * du + dv * dv)) * 8.0
        else:  # lines of half-width 0.06..0.14 cells
            edge = np.minimum(0.5 - np.abs(du), 0.5 - np.abs(dv))
            s = ((0.06 + 0.08 * a) - edge) * 12.0
    elif name == "waves":
        warp = (0.08 + 0.12 * a) * np.sin(vr * (f * (0.4 + 0.4 * bb)))
        s = np.sin((ur + warp) * f + ph)
    elif name == "zigzag":
        g = vr * (f * (0.4 + 0.4 * bb)) / _TWO_PI
        tri = np.abs(g - np.floor(g) - 0.5) * 4.0 - 1.0  # triangle wave in [-1, 1]
        s = np.sin((ur + (0.08 + 0.12 * a) * tri) * f + ph)
    else:  # concentric, spiral
        dx = grid.u - _col(p["tex_cx"])
        dy = grid.v - _col(p["tex_cy"])
        phase = np.sqrt(dx * dx + dy * dy) * f + ph
        if name == "spiral":
            phase += np.floor(1.0 + 4.0 * a) * np.arctan2(dy, dx)
        s = np.sin(phase)
    return np.clip(0.5 + 0.5 * _col(p["tex_sharp"]) * s, 0.0, 1.0)


def _draw_objects(img: Array, p: dict[str, Array], count: int, grid: _Grid) -> None:
    for j in range(count):
        c = p["obj_c"][:, j]
        r = _col(p["obj_r"][:, j])
        dx = grid.u - _col(c[:, 0])
        dy = grid.v - _col(c[:, 1])
        rot = p["obj_rot"][:, j]
        cr, sr = _col(np.cos(rot)), _col(np.sin(rot))
        x, y = dx * cr + dy * sr, dy * cr - dx * sr
        disc = np.sqrt(x * x + y * y) - r
        square = np.maximum(np.abs(x), np.abs(y)) - r * 0.85
        d = np.where(_col(p["obj_square"][:, j]), square, disc) * _F(grid.ppu)
        alpha = np.clip(0.5 - d, 0.0, 1.0, out=d)
        _blend(img, alpha, np.clip(p["fg"] + p["obj_tint"][:, j], 0, 255))


def _render_segment(
    task: str, p: dict[str, Array], cls: int, grid: _Grid, img: Array
) -> None:
    """Renders images of one class (``p`` sliced to them) into ``img`` (B, 3, H, W)."""
    if task == "textures":
        _fill(img, _texture_mix(p, _TEXTURES[cls], grid), p["bg_c1"], p["tex_c2"])
        # Mild illumination gradient so colour statistics alone are less useful.
        ur, _ = _rotated(grid, p["bg_angle"])
        img *= (1.0 + 0.15 * _col(p["bg_gain"]) * ur)[:, None]
        return
    b, _, h, w = img.shape
    _fill(img, _background_mix(p, grid, b, h, w), p["bg_c1"], p["bg_c2"])
    if task == "counting":
        _draw_objects(img, p, cls + 1, grid)
        return
    _draw_lines(img, p, grid)
    shapes = _SOURCE_SHAPES if task == "shapes_source" else _TARGET_SHAPES
    _draw_shape(img, p, shapes[_TASK_CLASSES[task][cls]], grid)


def _render_chunk(
    task: str,
    p: dict[str, Array],
    labels: Array,
    grid: _Grid,
    hw: tuple[int, int],
    noise_rng: np.random.Generator,
) -> Array:
    """Renders a chunk of images sorted by label; returns uint8 (B, H, W, 3) (a view)."""
    b = labels.size
    h, w = hw
    img = np.empty((b, 3, h, w), _F)
    cuts = np.flatnonzero(labels[1:] != labels[:-1]) + 1
    for s0, s1 in zip(np.r_[0, cuts], np.r_[cuts, b], strict=True):
        seg = {k: v[s0:s1] for k, v in p.items()}
        _render_segment(task, seg, int(labels[s0]), grid, img[s0:s1])
    # Uniform pixel noise from raw bytes (much cheaper than Gaussian draws).
    # Each image takes a multiple of 4 bytes so the stream does not depend on
    # chunking.
    n_px = h * w * 3
    stride = -(-n_px // 4) * 4
    raw = np.frombuffer(noise_rng.bytes(b * stride), np.int8).reshape(b, stride)
    noise = raw[:, :n_px].reshape(b, 3, h, w).astype(_F)
    noise *= (p["noise"] * _F(1.0 / 73.9))[:, None, None, None]  # int8 std is ~73.9
    img += noise
    img += 0.5  # round half up on the truncating cast below
    np.clip(img, 0.0, 255.0, out=img)
    return img.astype(np.uint8).transpose(0, 2, 3, 1)


def _task_key(task: str) -> int:
    return zlib.crc32(task.encode("utf-8"))


def _generate(
    task: str,
    n: int | None,
    per_class: int | None,
    image_size: int | Sequence[int],
    seed: int,
    chunk_pixels: int = _CHUNK_PIXELS,
) -> tuple[Array, Array]:
    task = _check_task(task)
    hw = _check_size(image_size)
    if not is_int(seed) or seed < 0:
        raise ConfigError(f"seed must be a non-negative int, got {seed!r}.")
    seed = int(seed)
    n_cls = len(_TASK_CLASSES[task])
    rng = np.random.default_rng([seed, _task_key(task), 0])
    labels = _labels_for(n, per_class, n_cls, rng)
    total = labels.size
    m = min(hw)
    ext = (hw[0] / m, hw[1] / m)  # half-extent of the image in units
    if task == "shapes_source":
        params = _sample_shapes(rng, labels, list(_SOURCE_SHAPES.values()), ext)
    elif task == "shapes_target":
        params = _sample_shapes(rng, labels, list(_TARGET_SHAPES.values()), ext)
    elif task == "textures":
        params = _sample_textures(rng, labels, ext)
    else:
        params = _sample_counting(rng, labels, ext)
    # Render in class order (one SDF per contiguous run of images, no gathers);
    # within a class, images with more distractor lines come first.
    if "n_lines" in params:
        order = np.lexsort((-params["n_lines"].astype(np.int64), labels))
    else:
        order = np.argsort(labels, kind="stable")
    # Pixel noise has its own stream, consumed in render order, so the bytes do
    # not depend on how the work is chunked.
    noise_rng = np.random.default_rng([seed, _task_key(task), 1, hw[0], hw[1]])
    grid = _Grid.make(*hw)
    images = np.empty((total, hw[0], hw[1], 3), np.uint8)
    step = max(1, chunk_pixels // (hw[0] * hw[1]))
    for a in range(0, total, step):
        idx = order[a : a + step]
        chunk = {k: v[idx] for k, v in params.items()}
        images[idx] = _render_chunk(task, chunk, labels[idx], grid, hw, noise_rng)
    return images, labels


# ---------------------------------------------------------------------------
# Public generation API
# ---------------------------------------------------------------------------


def make_images(
    task: str,
    n: int | None = None,
    per_class: int | None = None,
    image_size: int | Sequence[int] = 64,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Generates a labelled image set as NumPy arrays.

    Classes are balanced (with ``n``, class counts differ by at most one) and
    the order is shuffled. The output is a pure function of the arguments:
    the same arguments give byte-identical arrays (on the same platform and
    NumPy build). For square sizes the scenes of a seed (labels, placement,
    colours) do not depend on ``image_size``; only the pixel noise differs.

    Args:
        task: One of :data:`TASKS`.
        n: Total number of images. Exactly one of ``n`` and ``per_class``.
        per_class: Number of images per class.
        image_size: Side in pixels (``int``) or ``(height, width)``; each side
            must be at least :data:`MIN_IMAGE_SIZE`. Shapes are recognisable
            from about 32 px and comfortable at 48-64 px.
        seed: Non-negative random seed.

    Returns:
        ``(images, labels)``: ``uint8`` array of shape ``(N, H, W, 3)`` and
        ``int32`` array of shape ``(N,)`` with values in
        ``range(num_classes(task))``.

    Raises:
        ValueError: On an unknown task, a bad size, count or seed (a
            ``tltf.errors.ConfigError``, with close-match suggestions for
            task names).

    Example:
        >>> x, y = make_images("shapes_target", n=10, image_size=(48, 64), seed=1)
        >>> x.shape, len(set(y.tolist()))  # 10 distinct classes out of 12
        ((10, 48, 64, 3), 10)
    """
    return _generate(task, n, per_class, image_size, seed)


def make_dataset(
    task: str,
    n: int | None = None,
    per_class: int | None = None,
    image_size: int | Sequence[int] = 64,
    seed: int = 0,
    batch_size: int = 32,
    dtype: str = "uint8",
    shuffle: bool = False,
    drop_remainder: bool = False,
) -> tf.data.Dataset:
    """Builds a batched ``tf.data.Dataset`` of ``(image, label)`` pairs.

    The images are generated once with :func:`make_images` (so the dataset is
    deterministic and held in memory) and sliced into batches.

    Args:
        task: One of :data:`TASKS`.
        n: Total number of images. Exactly one of ``n`` and ``per_class``.
        per_class: Number of images per class.
        image_size: Side in pixels, or ``(height, width)``.
        seed: Non-negative random seed.
        batch_size: Positive batch size.
        dtype: ``"uint8"`` (raw pixels) or ``"float32"`` (values 0..255, not
            rescaled, ready for a model's own ``Rescaling`` layer).
        shuffle: If true, reshuffle the (already shuffled) examples each epoch
            with a seeded full-size buffer.
        drop_remainder: Drop the last incomplete batch.

    Returns:
        A dataset with element spec ``(TensorSpec((None, H, W, 3), dtype),
        TensorSpec((None,), tf.int32))`` (static batch size if
        ``drop_remainder``).

    Raises:
        ValueError: On an unknown task, a bad size, count, seed, batch size or
            dtype (a ``tltf.errors.ConfigError``).

    Example:
        >>> ds = make_dataset("shapes_source", per_class=4, image_size=32, batch_size=16)
        >>> x, y = next(iter(ds))
        >>> x.shape, x.dtype.name, y.dtype.name
        (TensorShape([16, 32, 32, 3]), 'uint8', 'int32')
    """
    if not is_int(batch_size) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive int, got {batch_size!r}.")
    if dtype not in ("uint8", "float32"):
        raise ConfigError(f"dtype must be 'uint8' or 'float32', got {dtype!r}.")
    images, labels = make_images(
        task, n=n, per_class=per_class, image_size=image_size, seed=seed
    )

    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((images, labels))
    if shuffle:
        ds = ds.shuffle(len(labels), seed=int(seed), reshuffle_each_iteration=True)
    ds = ds.batch(int(batch_size), drop_remainder=drop_remainder)
    if dtype == "float32":
        ds = ds.map(
            lambda x, y: (tf.cast(x, tf.float32), y),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    return ds.prefetch(tf.data.AUTOTUNE)
