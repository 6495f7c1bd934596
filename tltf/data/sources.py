"""The readers of every source but TFDS: `(images, labels)` arrays, `.npz` files,
image folders (with the scan for unreadable and oversized files) and `tf.data`
datasets; what kind a source is, and the suggestions for a path that is missing.
"""

from __future__ import annotations

import difflib
import os
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tensorflow as tf

from tltf.data.bundle import Source
from tltf.data.images import (
    ImageOptions,
    check_pixel_values,
    decode_bytes,
    decode_file,
    image_shape_error,
    prepare_image,
)
from tltf.data.inputs import pipeline_error_text
from tltf.data.labels import (
    MAX_LISTED,
    check_dataset_spec,
    check_one_label_per_image,
    normalize_labels,
    read_labels,
)
from tltf.data.tfds import is_tfds_name, tfds_name_hint
from tltf.errors import ConfigError, DataError, did_you_mean

#: File extensions read from an image folder (case-insensitive); GIFs give their
#: first frame.
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".gif")

#: Image files with more pixels than this (read from the file's header, before
#: decoding) are skipped and listed, like unreadable files: decoding a 16000x16000
#: PNG takes gigabytes of memory. The limit is PIL's `MAX_IMAGE_PIXELS`. Set
#: `tltf.data.MAX_IMAGE_PIXELS` higher, or to None, to read larger images.
MAX_IMAGE_PIXELS: int | None = 89_478_485

_AUTOTUNE = tf.data.AUTOTUNE


def _arrays_source(
    x, y, opts: ImageOptions, num_classes: int | None, what: str, class_names=None
) -> Source:
    try:
        x = np.asarray(x)
    except ValueError:
        x = None
    if x is None or x.dtype == object:
        raise DataError(
            f"Expected {what} images as one array of shape (N, height, width, "
            "channels). Received images of different shapes. Resize them to one "
            "size first, or pass a tf.data.Dataset or an image folder."
        )
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
        raise DataError(f"Expected numeric {what} images. Received dtype {x.dtype}.")
    if x.ndim == 3:
        x = x[..., np.newaxis]
    if x.ndim != 4 or x.shape[-1] not in (1, 3, 4):
        raise image_shape_error(x.shape, what)
    y = np.asarray(y)
    check_one_label_per_image(x, y, what)
    labels, num_classes = normalize_labels(y, opts.task, num_classes, what)
    if class_names is not None and len(class_names) != num_classes:
        raise DataError(
            f"{what} has {len(class_names)} class names but num_classes="
            f"{num_classes}. Give one name per class."
        )
    check_pixel_values(x, what)

    def make(indices):
        if indices is None:
            return tf.data.Dataset.from_tensor_slices((x, labels))
        return tf.data.Dataset.from_tensor_slices((x[indices], labels[indices]))

    uint8 = x.dtype == np.uint8
    return Source(
        make=make,
        prepare=lambda image, label: (prepare_image(image, opts, uint8), label),
        labels=labels,
        num_classes=num_classes,
        class_names=class_names,
        uint8=uint8,
        bytes_per_raw=int(np.prod(x.shape[1:])) * x.itemsize,
        size=len(x),
    )


def _npz_source(path: Path, opts: ImageOptions, num_classes, what: str):
    """Returns (train source, validation arrays or None)."""
    if not zipfile.is_zipfile(path):
        raise DataError(
            f"Could not read {str(path)!r}: it is not a .npz archive. Save the data "
            "with np.savez(path, x=images, y=labels)."
        )
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except ValueError as error:
        if "pickle" not in str(error):
            raise DataError(f"Could not read {str(path)!r}: {error}") from None
        raise DataError(
            f"Could not read {str(path)!r}: it holds Python objects (pickled "
            "arrays), which tltf does not load. Save class_names as a str array "
            "(np.array(names)) and images and labels as numeric arrays."
        ) from None
    except Exception as error:
        raise DataError(
            f"Could not read {str(path)!r} as a .npz file ({type(error).__name__}: "
            f"{error}). Save it with np.savez(path, x=images, y=labels)."
        ) from None
    for xk, yk in (("x", "y"), ("images", "labels")):
        if xk in arrays and yk in arrays:
            break
    else:
        raise DataError(
            f"Expected arrays 'x' and 'y' (or 'images' and 'labels') in {path}. "
            f"Found: {sorted(arrays)}. Save it with np.savez(path, x=images, y=labels)."
        )
    names = arrays.get("class_names")
    names = [str(n) for n in names.tolist()] if names is not None else None
    if num_classes is None and names is not None:
        num_classes = len(names)
    source = _arrays_source(arrays[xk], arrays[yk], opts, num_classes, what, names)
    val = None
    for vx, vy in (("x_val", "y_val"), ("images_val", "labels_val")):
        if vx in arrays and vy in arrays:
            val = (arrays[vx], arrays[vy])
    return source, val


def _list_folder(root: Path, what: str, class_names: list[str] | None):
    """Image paths, labels, classes and non-image files of a class-folder tree."""
    subdirs = sorted(
        d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")
    )
    if not subdirs:
        loose = [f.name for f in root.iterdir() if f.is_file()]
        if loose:
            raise DataError(
                f"Folder {str(root)!r} ({what}) has files but no class subfolders. "
                "Put each class's images in its own subfolder, e.g. "
                f"{root / 'cats' / 'img1.jpg'}."
            )
        raise DataError(
            f"Folder {str(root)!r} ({what}) is empty. Expected one subfolder per "
            f"class, e.g. {root / 'cats' / 'img1.jpg'}."
        )
    if class_names is None:
        class_names = subdirs
    else:
        unknown = [d for d in subdirs if d not in class_names]
        if unknown:
            if what == "validation":
                raise DataError(
                    f"validation folder {str(root)!r} has class subfolders "
                    f"{unknown} that are not among the training classes "
                    f"{class_names}. Use the same class subfolders in both folders."
                )
            raise DataError(
                f"Folder {str(root)!r} has class subfolders {unknown} that are not "
                f"among the classes {class_names}, so they have no label. Rename or "
                "remove them."
            )
    paths, labels, others = [], [], []
    for index, name in enumerate(class_names):
        folder = root / name
        if not folder.is_dir():
            continue
        for file in sorted(folder.rglob("*")):
            rel = file.relative_to(root)
            if not file.is_file() or any(p.startswith(".") for p in rel.parts):
                continue
            if file.suffix.lower() in IMAGE_EXTENSIONS:
                paths.append(str(file))
                labels.append(index)
            else:
                others.append(str(file))
    return paths, np.asarray(labels, np.int32), class_names, others


def _header_size(contents: tf.Tensor) -> tf.Tensor:
    """(height, width) from a PNG, JPEG, GIF or BMP header, without decoding.

    (0, 0) when the format is not recognised; a corrupt JPEG header raises.
    """

    def number(offset: int, size: int, little_endian: bool) -> tf.Tensor:
        raw = tf.io.decode_raw(
            tf.strings.substr(contents, offset, size),
            tf.uint16 if size == 2 else tf.int32,
            little_endian=little_endian,
        )
        return tf.abs(tf.cast(raw[0], tf.int64))

    def starts(magic: bytes) -> tf.Tensor:
        return tf.logical_and(
            tf.strings.length(contents) >= 26,
            tf.equal(tf.strings.substr(contents, 0, len(magic)), magic),
        )

    return tf.case(
        [
            (
                starts(b"\x89PNG\r\n\x1a\n"),
                lambda: tf.stack([number(20, 4, False), number(16, 4, False)]),
            ),
            (
                starts(b"\xff\xd8"),
                lambda: tf.cast(tf.image.extract_jpeg_shape(contents)[:2], tf.int64),
            ),
            (
                starts(b"GIF8"),
                lambda: tf.stack([number(8, 2, True), number(6, 2, True)]),
            ),
            (
                starts(b"BM"),
                lambda: tf.stack([number(22, 4, True), number(18, 4, True)]),
            ),
        ],
        default=lambda: tf.zeros([2], tf.int64),
    )


def _is_utf8(path: str) -> bool:
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes, kept as surrogates by Python
        return False
    return True


def printable_path(path: str) -> str:
    """A path as text that prints anywhere: bytes that are not UTF-8 as \\xNN."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def scan_image_files(paths: Sequence[str]) -> tuple[np.ndarray, dict[str, str]]:
    """Which image files can be read: one parallel pass that decodes every file.

    A file is skipped when TensorFlow cannot decode it, when its name is not
    UTF-8 (TensorFlow cannot open it), or when its header declares more than
    `MAX_IMAGE_PIXELS` pixels (it is then not decoded at all).

    Args:
        paths: list of str. Image file paths.

    Returns:
        The mask of readable files, and `{path: reason}` for the files skipped
        for a reason other than being unreadable.
    """
    ok = np.zeros(len(paths), bool)
    reasons = {p: "its name is not UTF-8; rename it" for p in paths if not _is_utf8(p)}
    named = [i for i, p in enumerate(paths) if p not in reasons]
    if not named:
        return ok, reasons
    limit = MAX_IMAGE_PIXELS or 0

    def check(i, path):
        contents = tf.io.read_file(path)
        size = _header_size(contents)
        large = tf.logical_and(limit > 0, size[0] * size[1] > limit)
        shape = tf.cond(
            large,
            lambda: tf.zeros([3], tf.int32),
            lambda: tf.shape(decode_bytes(contents)),
        )
        return i, size, large, shape

    ds = tf.data.Dataset.from_tensor_slices(
        (np.asarray(named), [paths[i] for i in named])
    )
    ds = ds.map(check, num_parallel_calls=_AUTOTUNE).ignore_errors()
    for index, size, large, _ in ds.batch(4096).as_numpy_iterator():
        ok[index[~large]] = True
        for i, (height, width) in zip(index[large], size[large], strict=True):
            reasons[paths[i]] = (
                f"{width}x{height} = {height * width:,} pixels, over "
                f"tltf.data.MAX_IMAGE_PIXELS={limit:,}; set it higher (or to None) "
                "to read it"
            )
    return ok, reasons


def skipped_files_text(paths: Sequence[str], reasons: dict[str, str], root=None) -> str:
    """Skipped files (relative to `root` if given) as one printable, short list."""
    listed = [
        printable_path(p if root is None else os.path.relpath(p, root))
        + (f" ({reasons[p]})" if p in reasons else "")
        for p in paths
    ]
    return ", ".join(listed[:MAX_LISTED]) + (
        f", ... ({len(listed) - MAX_LISTED} more)" if len(listed) > MAX_LISTED else ""
    )


def _drop_empty_classes(
    root: Path, labels: np.ndarray, class_names: list[str], strict: bool
) -> tuple[np.ndarray, list[str]]:
    """Drops the class folders without readable images (`strict` refuses them).

    No model output is then trained for a class it never sees. A user who wants
    such an output passes `num_classes` (the folder count), which keeps them.

    Returns:
        The labels renumbered over the kept classes, and the kept class names.
    """
    counts = np.bincount(labels, minlength=len(class_names))
    empty = [n for n, c in zip(class_names, counts, strict=True) if c == 0]
    kept = [n for n, c in zip(class_names, counts, strict=True) if c > 0]
    if not empty:
        return labels, class_names
    listed = ", ".join(empty)
    if len(kept) < 2:
        raise DataError(
            f"Folder {str(root)!r} has images in only one class folder ({kept[0]!r}); "
            f"these have none: {listed}. A classifier needs images of at least 2 "
            "classes: add images to the empty folders."
        )
    if strict:
        raise DataError(
            f"Class folders with no readable images in {str(root)!r}: {listed}. The "
            "model would have an output for a class it never sees. Add images to "
            f"them or delete them; pass strict=False to drop them, or num_classes="
            f"{len(class_names)} to keep them."
        )
    print(
        f"tltf: note: dropped class folders with no readable images: {listed} "
        f"({len(kept)} classes left; num_classes={len(class_names)} keeps them, "
        "strict=True refuses them)"
    )
    renumber = np.cumsum(counts > 0) - 1
    return renumber[labels].astype(np.int32), kept


def _folder_source(
    root: Path,
    opts: ImageOptions,
    num_classes,
    what: str,
    strict: bool,
    class_names=None,
) -> Source:
    given_names = class_names
    paths, labels, class_names, others = _list_folder(root, what, class_names)
    if opts.task not in ("multiclass", "binary"):
        raise ConfigError(
            f"An image folder gives one class per image; task={opts.task!r} needs "
            "arrays, a .npz file or a tf.data.Dataset of its targets. Use "
            "task='multiclass' (or 'binary' with two subfolders)."
        )
    if opts.task == "binary" and len(class_names) != 2:
        raise DataError(
            f"task='binary' needs exactly 2 class subfolders. Received "
            f"{len(class_names)}: {class_names}."
        )
    if num_classes is not None and num_classes != len(class_names):
        raise ConfigError(
            f"Folder {str(root)!r} has {len(class_names)} class subfolders "
            f"{class_names}, but num_classes={num_classes}. Leave num_classes unset "
            f"(tltf reads it from the subfolders) or set it to {len(class_names)}."
        )
    ok, reasons = scan_image_files(paths)
    bad = [p for p, good in zip(paths, ok, strict=True) if not good]
    skipped = sorted(others + bad)
    if skipped:
        shown = skipped_files_text(skipped, reasons, root)
        if strict:
            raise DataError(
                f"Found {len(skipped)} unreadable or non-image files in "
                f"{str(root)!r}: {shown}. Remove or fix them, or pass strict=False "
                "to skip them."
            )
        plural = "s" if len(skipped) > 1 else ""
        print(f"tltf: skipped {len(skipped)} unreadable file{plural}: {shown}")
    paths = [p for p, good in zip(paths, ok, strict=True) if good]
    labels = labels[ok]
    if not paths:
        raise DataError(
            f"Folder {str(root)!r} ({what}) has no readable images. Expected files "
            f"ending in {', '.join(IMAGE_EXTENSIONS)} inside its class subfolders."
        )
    if given_names is None and num_classes is None:
        labels, class_names = _drop_empty_classes(root, labels, class_names, strict)
    else:
        counts = np.bincount(labels, minlength=len(class_names))
        empty = [n for n, c in zip(class_names, counts, strict=True) if c == 0]
        if empty and what == "train":
            print(
                "tltf: note: class folders with no readable images (kept: "
                f"num_classes={num_classes}): {', '.join(empty)}"
            )
    path_array = np.asarray(paths)

    def make(indices):
        chosen = path_array if indices is None else path_array[indices]
        chosen_labels = labels if indices is None else labels[indices]
        return tf.data.Dataset.from_tensor_slices((chosen, chosen_labels))

    return Source(
        make=make,
        prepare=lambda path, label: (
            prepare_image(decode_file(path), opts, True),
            label,
        ),
        labels=labels,
        num_classes=len(class_names),
        class_names=list(class_names),
        skipped=skipped,
        size=len(paths),
    )


def _dataset_source(ds: tf.data.Dataset, opts: ImageOptions, num_classes, what: str):
    # Keras's image_dataset_from_directory names its classes on the dataset.
    names = getattr(ds, "class_names", None)
    rank, label_spec = check_dataset_spec(ds, f"the {what} dataset")
    batched = rank == 4
    unknown_channels = rank > 2 and ds.element_spec[0].shape[-1] is None
    try:
        raw_labels, channels = read_labels(ds, batched, what, unknown_channels)
    except tf.errors.OpError as error:
        raise DataError(
            f"Could not read the {what} dataset: {pipeline_error_text(error)}"
        ) from None
    if not channels <= {1, 3, 4}:
        raise DataError(
            f"Expected {what} images with 1, 3 or 4 channels (gray, RGB or RGBA). "
            f"Received images with {sorted(channels - {1, 3, 4})} channels. Map "
            "them to RGB first, e.g. ds.map(lambda x, y: (x[..., :3], y))."
        )
    if len(raw_labels) == 0:
        raise DataError(f"{what} is empty: it yields no examples.")
    labels, num_classes = normalize_labels(raw_labels, opts.task, num_classes, what)
    if batched:
        ds = ds.unbatch()
    label_rank = label_spec.shape.rank - (1 if batched else 0)
    task = opts.task

    def clean_label(y):
        if task in ("multilabel", "regression"):
            return tf.cast(y, tf.float32)
        if label_rank == 1:
            y = (
                tf.argmax(y, output_type=tf.int32)
                if raw_labels.ndim == 2 and raw_labels.shape[1] > 1
                else tf.reshape(y, [])
            )
        return tf.cast(y, tf.int32)

    n = len(labels)
    uint8 = ds.element_spec[0].dtype == tf.uint8

    def make(indices):
        if indices is None:
            return ds
        mask = np.zeros(n, bool)
        mask[indices] = True
        mask = tf.constant(mask)
        chosen = ds.enumerate().filter(lambda i, _: mask[i]).map(lambda _, e: e)
        return chosen.apply(tf.data.experimental.assert_cardinality(len(indices)))

    named = (
        isinstance(names, (list, tuple))
        and len(names) == num_classes
        and all(isinstance(name, str) for name in names)
    )
    return Source(
        make=make,
        prepare=lambda x, y: (prepare_image(x, opts, uint8), clean_label(y)),
        labels=labels,
        num_classes=num_classes,
        class_names=list(names) if named else None,
        uint8=uint8,
        bytes_per_raw=opts.size[0] * opts.size[1] * 3 * 4,
        size=n,
    )


def source_kind(source) -> str:
    if isinstance(source, tf.data.Dataset):
        return "dataset"
    if isinstance(source, (tuple, list)) and len(source) == 2:
        return "arrays"
    if isinstance(source, (tuple, list)) and len(source) == 3:
        raise DataError(
            "Received (images, labels, sample_weights) as a data source, whose "
            "bundles do not weigh images. Pass (images, labels) here; fine_tune "
            "and evaluate take (images, labels, sample_weights) themselves."
        )
    if isinstance(source, (str, os.PathLike)):
        text = os.fspath(source)
        if text.startswith("tfds:"):
            return "tfds"
        path = Path(text).expanduser()
        if path.is_dir():
            return "folder"
        if path.is_file():
            if path.suffix.lower() == ".npz":
                return "npz"
            raise DataError(
                f"Expected a folder of class subfolders, a .npz file, or a TFDS name "
                f"as the data source. Received the file {text!r}."
            )
        local = _near_paths(text) != ([], None)
        if isinstance(source, str) and not local and is_tfds_name(text):
            return "tfds"  # a TFDS name, and nothing on disk resembles it
        raise _no_such_path(text, tfds_hint=isinstance(source, str))
    if isinstance(source, np.ndarray):
        raise DataError(
            "Received one array as the data source. Pass (images, labels) as a tuple."
        )
    raise DataError(
        "Expected the data source as a folder path, a .npz path, a TFDS name "
        "('tfds:tf_flowers'), an (images, labels) tuple or a tf.data.Dataset. "
        f"Received: {type(source).__name__}"
    )


def _near_paths(text: str) -> tuple[list[str], str | None]:
    """What exists on disk near the missing path `text`, written the way it was.

    The first missing part of `text` is compared (with `difflib`) to the folders
    and `.npz` files beside it; the parts after it are kept when the corrected
    path exists.

    Returns:
        The close matches (best first, at most 3), and the deepest existing
        folder that `text` names (None when even its first part is missing,
        or only its root, such as "/" or "~", exists).
        With `mnist/train` and `mnist/test` on disk, `"mnist/trian"` gives
        `(["mnist/train"], "mnist")`.
    """
    parts = Path(text).parts
    if not parts:
        return [], None
    first = Path(parts[0]).expanduser()
    rooted = first.is_absolute() or first != Path(parts[0])
    folder, start = (first, 1) if rooted else (Path("."), 0)
    for i in range(start, len(parts)):
        if (folder / parts[i]).exists():
            folder = folder / parts[i]
            continue
        try:
            siblings = [
                p.name
                for p in folder.iterdir()
                if not p.name.startswith(".")
                and (p.is_dir() or p.suffix.lower() == ".npz")
            ]
        except OSError:  # not a folder, or unreadable
            siblings = []
        matches = []
        for name in difflib.get_close_matches(parts[i], siblings, n=3, cutoff=0.6):
            whole = Path(*parts[:i], name, *parts[i + 1 :])
            fixed = whole if whole.expanduser().exists() else Path(*parts[:i], name)
            matches.append(str(fixed))
        return matches, str(Path(*parts[:i])) if i > start else None
    return [], None


def _no_such_path(text: str, tfds_hint: bool) -> DataError:
    """The error for the missing path `text`, with what is near it on disk."""
    near, existing = _near_paths(text)
    what = "file" if Path(text).suffix.lower() == ".npz" else "folder"
    message = f"No such {what} {text!r}.{did_you_mean(near)}"
    if existing is not None and not near:
        message += f" {existing!r} has nothing of that name."
    if not Path(text).expanduser().is_absolute():
        message += f" Relative paths start from the working folder {os.getcwd()!r}."
    if tfds_hint:
        message += tfds_name_hint(text, bool(near), existing is not None)
    return DataError(message)


def read_source(source, kind, opts, num_classes, what, strict, class_names=None):
    if kind == "dataset":
        return _dataset_source(source, opts, num_classes, what), None
    if kind == "arrays":
        return _arrays_source(
            source[0], source[1], opts, num_classes, what, class_names
        ), None
    path = Path(os.fspath(source)).expanduser()
    if kind == "npz":
        return _npz_source(path, opts, num_classes, what)
    return _folder_source(path, opts, num_classes, what, strict, class_names), None
