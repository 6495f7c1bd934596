"""The `tltf` command line: bases, train, tune, evaluate, predict, export, demo.

`train` and `tune` take flags and/or a config file (YAML, TOML or JSON; see
`tltf.config`) and write a run folder (see `tltf.runs`). Every error tltf raises
on purpose (a `tltf.errors.TltfError`, which includes bad configs and bad data
paths) and every file-system error is printed as one line, `tltf: error:
<message>`, with exit status 2 and no traceback, like an argparse usage error.
Ctrl-C prints `tltf: interrupted` and exits with 130.

Example:

    $ tltf bases --filter "efficientnet*"
    $ tltf train --base demo --train photos/ --val-fraction 0.2 --out runs/first
    $ tltf train --config train.yaml --out runs/flowers
    $ tltf evaluate runs/flowers
    $ tltf predict runs/flowers photos/ --output predictions.csv
    $ tltf export runs/flowers --format tflite --quantize dynamic
    $ tltf demo --k 5 10 20 --out runs/demo
    $ tltf rank --data photos/ --bases demo vgg16 --out rank.csv --plot rank.png

Why about 1,200 lines: one parser and one handler per command (bases, train,
tune, evaluate, predict, export, demo), with their help texts; the work itself
is in `runs`, `evaluation`, `export` and `demo`.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Sequence

from tltf import datasets, runs
from tltf._version import __version__
from tltf.bases.base import is_model_file, load_base, read_base_record
from tltf.bases.registry import (
    REGISTRY,
    SHIPPED_BASES,
    get_spec,
    list_bases,
    shipped_base_path,
)
from tltf.config import FINE_TUNE_DEFAULTS as D
from tltf.config import (
    TrainConfig,
    TuneConfig,
    load_config_file,
    merge,
    parse_assignment,
    parse_source,
    parse_value,
)
from tltf.data import load_data
from tltf.demo import run_demo
from tltf.errors import ConfigError, DataError, ModelError, TltfError, suggest
from tltf.evaluation import (
    check_predictions_path,
    check_report_path,
    evaluate,
    predict,
    write_predictions,
)
from tltf.export import export_model, format_from_path
from tltf.info import class_names_of
from tltf.layers import PREPROCESSING_MODES
from tltf.model import load_model
from tltf.pretrain import DEMO_BASE, pretrain, store_dir, stored_bases
from tltf.probe import PROBE_IMAGES
from tltf.ranking import check_table_path, rank_bases
from tltf.reports import check_figure_path
from tltf.runs import (
    BEST_MODEL,
    CONFIG_FILE,
    LAST_MODEL,
    REFIT_MODEL,
    SOUP_MODEL,
    RunFolder,
    default_image_size,
    default_run_dir,
    find_run,
    load_run_data,
    resolve_base,
    resolve_image_size,
    saved_base_folder,
    still_improving_hint,
)

#: Exit status of a usage or configuration error (as argparse uses).
EXIT_ERROR = 2

_BASES_EPILOG = """\
"demo" is the base shipped with tltf: MobileNetV3Small @64 px pretrained on
tltf's procedural shapes_source. It needs no download (tltf train --base demo).
Bases that tltf pretrain wrote into the base store are listed last.

examples:
  tltf bases                          every registry name, and demo
  tltf bases --filter "efficientnet*" one family (shell-style pattern)
  tltf bases --filter "*v2*"
  tltf bases efficientnet_b0          one entry, with its preprocessing
  tltf bases demo                     the shipped base: where it is, its blocks
"""

_DEMO_EPILOG = """\
The demo pretrains a small base on the procedural shapes_source task (about 4
minutes on 2 CPU cores, once; it is cached in $TLTF_HOME/bases or
~/.cache/tltf/bases), then compares transfer with training from scratch on
shapes_target with k labelled images per class (about 3.5 minutes).

examples:
  tltf demo                           k = 5, 10, 20; writes runs/demo-<timestamp>
  tltf demo --k 5 20 --seed 1 --out runs/demo-seed1
  tltf demo --quick                   tiny sizes: a smoke test, not a result
  tltf demo --no-augment              every run on the images as they are
"""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def _image_count(text: str) -> int | None:
    """`--max-images`: an integer >= 1, or "all" (None)."""
    if text == "all":
        return None
    try:
        return _positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected an integer >= 1 or 'all', got {text!r}"
        ) from None


def _nonnegative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The `tltf` argument parser and its subcommands."""
    parser = argparse.ArgumentParser(
        prog="tltf",
        description="Transfer learning for Keras and TensorFlow.",
        epilog="Run `tltf <command> --help` for a command's options and examples.",
    )

    parser.add_argument("--version", action="version", version=f"tltf {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="<command>", required=True)

    bases = commands.add_parser(
        "bases",
        help="list the base registry",
        description="Lists the registry's bases and the bases shipped with tltf: "
        "name, family, default input size (ImageNet's, or a shipped base's own) "
        "and minimum input size.",
        epilog=_BASES_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    bases.add_argument(
        "name",
        nargs="?",
        help="show one base's entry (a registry, constructor or shipped name)",
    )
    bases.add_argument(
        "--filter",
        metavar="PATTERN",
        default="*",
        help='shell-style pattern on the name, e.g. "mobilenet*" (default: all)',
    )
    bases.add_argument(
        "--blocks",
        action="store_true",
        help="also build each base (random weights) to show its block and "
        "parameter counts (about 1 s per base)",
    )
    bases.set_defaults(handler=_cmd_bases)
    _add_run_commands(commands)
    _add_rank_command(commands)

    demo = commands.add_parser(
        "demo",
        help="run the transfer-vs-scratch demo",
        description="Fine-tunes a base pretrained on shapes_source on k labelled "
        "images per class of shapes_target, against the same architecture trained "
        "from scratch, and writes a run folder (summary.json and plots).",
        epilog=_DEMO_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.add_argument(
        "--k",
        nargs="+",
        type=_positive_int,
        default=[5, 10, 20],
        metavar="K",
        help="labelled training images per class (default: 5 10 20)",
    )
    demo.add_argument(
        "--seed", type=_nonnegative_int, default=0, help="seed (default: 0)"
    )
    demo.add_argument(
        "--out",
        metavar="DIR",
        default=None,
        help="run folder to create (default: runs/demo-<timestamp>)",
    )
    demo.add_argument(
        "--quick", action="store_true", help="tiny sizes, for a smoke test"
    )
    demo.add_argument(
        "--no-augment",
        dest="augment",
        action="store_false",
        help="train every run on the images as they are (default: random flips, "
        "rotations, zooms, shifts and contrast, for transfer and scratch alike)",
    )
    demo.set_defaults(handler=_cmd_demo)
    _add_pretrain_command(commands)
    return parser


_TRAIN_EPILOG = """\
Data (--train, --val) is tfds:NAME (optionally tfds:NAME[SPLIT]), a folder with
one subfolder per class, or a .npz file with x/y arrays. Flags override the
values of --config (YAML, TOML or JSON; sections model, data, schedule); --set
reaches any config key. The run folder gets config.yaml, history.csv,
tensorboard/, best.keras, last.keras, plots/, evaluation.json and, last,
summary.json.

By default tltf decides: --head-epochs auto (stage 1 until the head's loss
converges), --fine-tune-epochs auto (from a step budget), --unfreeze auto and
--cut auto (from a linear probe of the blocks on the training data); --head-lr
find and --fine-tune-lr find run the learning-rate finder. Give numbers to fix
them. A run whose best epoch is its last (better by over 1%) says so, with how
to train longer.

examples:
  tltf train photos/ --base demo                   offline, no download
  tltf train --base demo --train photos/ --val-fraction 0.2
  tltf train --base mobilenet_v2 --weights none --train photos/ --val-fraction 0.2
  tltf train --base demo --train photos/ --head-lr find --fine-tune-lr find
  tltf train --base demo --train photos/ --head-epochs 5 --fine-tune-epochs 10 \\
             --unfreeze 3 --cut none
  tltf train --config train.yaml --out runs/flowers
  tltf train --config train.toml --head-epochs 3 --set model.head.dropout=0.3
  tltf train --base efficientnet_b0 --train "tfds:tf_flowers[train[:80%]]" \\
             --val "tfds:tf_flowers[train[80%:]]" --unfreeze 3
  tltf train --config runs/flowers/config.yaml --out runs/flowers-2
  tltf train --out runs/flowers --resume      continue an interrupted run
  tltf train --config train.yaml --out runs/flowers --overwrite
  tltf train --config train.yaml --print-config   show the resolved config
"""

_TUNE_EPILOG = """\
Takes the same data, model and schedule options as `tltf train`, plus the
[tune] section (tuner, max_trials, objective, search_space, soup, refit); the
rates, unfreeze, bn and lr_decay come from search_space, and the best trial is
picked by objective. Writes a run folder with config.yaml, the trials table, the
depth-vs-metric plot, the best model (best.keras), with --soup N a greedy soup
of the best N trials (soup.keras), with --refit the best values trained again on
every labelled image (refit.keras), and summary.json.

examples:
  tltf tune --config tune.yaml --max-trials 8 --out runs/tune-flowers
  tltf tune --base mobilenet_v2 --weights none --train photos/ --val-fraction 0.2 \\
            --tuner grid --max-trials 4
  tltf tune --base demo --train photos/ --val-fraction 0.2 --tuner random \\
            --max-trials 6 --soup 6
  tltf tune --base demo --train photos/ --val-fraction 0.2 --refit
"""

_EVALUATE_EPILOG = """\
MODEL is a .keras file (runs/NAME/refit.keras, say) or a run folder (its
best.keras; without --data, its validation data from config.yaml). Writes
report.json (per-class precision, recall, F1, top-k accuracy) and
confusion.png to --out, and prints the report.

examples:
  tltf evaluate runs/flowers                 the run's validation data
  tltf evaluate runs/flowers --data test_photos/ --top-k 3
  tltf evaluate runs/flowers test_photos/    the same data, given first
  tltf evaluate model.keras --data "tfds:tf_flowers[train[80%:]]" --out eval/
"""

_PREDICT_EPILOG = """\
INPUT is image files, folders (searched recursively for .jpg, .jpeg, .png,
.bmp, .gif) or .npz files (array x or images). Writes one row per image with the
top-k labels and scores, as CSV or JSON (by the --output suffix), or prints CSV.

examples:
  tltf predict runs/flowers cat.jpg dog.png
  tltf predict runs/flowers/best.keras photos/ --top-k 3 --output preds.csv
  tltf predict model.keras batch.npz --output preds.json
"""

_EXPORT_EPILOG = """\
Formats: keras (.keras), savedmodel (a folder, via model.export, for TF Serving),
tflite (.tflite) with --quantize none (float32), float16, dynamic (dynamic-range
int8) or int8 (full integer; needs --representative DATA: a folder, .npz or
tfds:NAME[SPLIT] of typical images).

examples:
  tltf export runs/flowers --format savedmodel --output export/flowers
  tltf export runs/flowers --format tflite --output flowers.tflite
  tltf export runs/flowers --format tflite --quantize dynamic --output f-dyn.tflite
  tltf export runs/flowers --format tflite --quantize int8 \\
              --representative photos/ --output f-int8.tflite
"""

#: Flags of `train` and `tune` that set config keys: dest -> (section, key).
_CONFIG_FLAGS: dict[str, tuple[str, str]] = {
    "base": ("model", "base"),
    "weights": ("model", "weights"),
    "weights_dir": ("model", "weights_dir"),
    "task": ("model", "task"),
    "num_classes": ("model", "num_classes"),
    "cut": ("model", "cut"),
    "preprocessing": ("model", "preprocessing"),
    "train": ("data", "train"),
    "train_split": ("data", "train_split"),
    "val": ("data", "val"),
    "val_split": ("data", "val_split"),
    "val_fraction": ("data", "val_fraction"),
    "image_size": ("data", "image_size"),
    "resize": ("data", "resize"),
    "batch_size": ("data", "batch_size"),
    "seed": ("data", "seed"),
    "augment": ("data", "augment"),
    "head_epochs": ("schedule", "head_epochs"),
    "fine_tune_epochs": ("schedule", "fine_tune_epochs"),
    "head_lr": ("schedule", "head_lr"),
    "fine_tune_lr": ("schedule", "fine_tune_lr"),
    "unfreeze": ("schedule", "unfreeze"),
    "head_steps": ("schedule", "head_steps"),
    "head_init": ("schedule", "head_init"),
    "head_l2": ("schedule", "head_l2"),
    "keep_best": ("schedule", "keep_best"),
    "fine_tune_patience": ("schedule", "fine_tune_patience"),
    "bn": ("schedule", "bn"),
    "lr_decay": ("schedule", "lr_decay"),
    "lr_policy": ("schedule", "lr_policy"),
    "regularize": ("schedule", "regularize"),
    "wise": ("schedule", "wise"),
    "label_smoothing": ("schedule", "label_smoothing"),
    "loss": ("schedule", "loss"),
    "class_weight": ("schedule", "class_weight"),
    "monitor": ("schedule", "monitor"),
    "tuner": ("tune", "tuner"),
    "max_trials": ("tune", "max_trials"),
    "objective": ("tune", "objective"),
    "soup": ("tune", "soup"),
    "refit": ("tune", "refit"),
}


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def _fraction(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def _image_size(text: str) -> int | list[int]:
    parts = text.lower().replace("x", ",").split(",")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) not in (1, 2) or min(values) < 1:
        raise argparse.ArgumentTypeError(
            f"expected a size such as 224 or 224x160, got {text!r}"
        )
    return values[0] if len(values) == 1 else values


def _epochs(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an integer >= 0 or 'auto', got {text!r}{_suggest(text, 'auto')}"
        ) from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return value


def _number_or(words: str | tuple[str, ...], valid, expected: str):
    """The type of a flag that takes one of `words` or a number: `valid(number)`
    holds."""
    words = (words,) if isinstance(words, str) else tuple(words)

    def parse(text: str) -> float | str:
        if text in words:
            return text
        try:
            value = float(text)
        except ValueError:
            named = " or ".join(map(repr, words))
            raise argparse.ArgumentTypeError(
                f"expected {expected} or {named}, got {text!r}{_suggest(text, *words)}"
            ) from None
        if not valid(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    return parse


_learning_rate = _number_or("find", lambda v: v > 0, "a number > 0")
_fine_tune_lr = _number_or(("auto", "find"), lambda v: v > 0, "a number > 0")
_head_l2 = _number_or("auto", lambda v: math.isfinite(v) and v >= 0, "a number >= 0")
_wise = _number_or("auto", lambda v: 0 <= v <= 1, "a number in [0, 1]")


def _regularize(text: str) -> str | dict:
    if text == "l2sp":
        return text
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected 'l2sp' or an L2-SP strength >= 0, got {text!r}"
            f"{_suggest(text, 'l2sp')}"
        ) from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a strength >= 0, got {text!r}")
    return {"l2sp": value}


def _unfreeze(text: str) -> int | str | dict:
    if text in ("all", "auto"):
        return text
    if ".." in text:  # a block range, "first..last": names or positions
        ends = [e.strip() for e in text.split("..")]
        if len(ends) != 2 or not all(ends):
            raise argparse.ArgumentTypeError(
                f"expected a block range as FIRST..LAST (names or 0-based "
                f"positions, e.g. 0..1 or block3..block4), got {text!r}"
            )
        return {"range": [int(e) if e.lstrip("-").isdigit() else e for e in ends]}
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a number of top blocks, 'all' or 'auto', got {text!r}"
            f"{_suggest(text, 'all', 'auto')} (use --set "
            "schedule.unfreeze='{layers: 20}' for the other forms)"
        ) from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return value


def _show(value) -> str:
    """A default as help text shows it: 1e-05 for a float, else as it is."""
    return f"{value:g}" if isinstance(value, float) else str(value)


def _suggest(text: str, *words: str) -> str:
    hint = suggest(text, words)  # " Did you mean 'auto'?"
    return f"; {hint.strip()[0].lower()}{hint.strip()[1:]}" if hint else ""


def _block(text: str) -> int | str | None:
    if text.lower() in ("none", "null"):
        return None
    try:
        return int(text)
    except ValueError:
        return text


def _weights(text: str) -> str | None:
    return None if text.lower() in ("none", "null", "random") else text


def _add_config_arguments(parser: argparse.ArgumentParser, tune: bool) -> None:
    S = argparse.SUPPRESS
    files = parser.add_argument_group("configuration")
    files.add_argument(
        "--config",
        metavar="FILE",
        help="a YAML (.yaml/.yml), TOML (.toml) or JSON config file",
    )
    files.add_argument(
        "--set",
        metavar="SECTION.KEY=VALUE",
        action="append",
        default=[],
        help="set any config key (value in YAML syntax), e.g. "
        "--set model.head.dropout=0.3; repeatable",
    )
    files.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved config (YAML) and exit without training",
    )
    model = parser.add_argument_group("model (the [model] section)")
    model.add_argument(
        "--base",
        default=S,
        help="registry name (`tltf bases`), demo (the base shipped with tltf, "
        "offline), a saved base folder or a model file (.keras, .h5)",
    )
    model.add_argument(
        "--weights",
        type=_weights,
        default=S,
        help='"imagenet", "none" (random) or a weights file (default: imagenet)',
    )
    model.add_argument(
        "--weights-dir", default=S, help="offline ImageNet weights folder"
    )
    model.add_argument(
        "--task",
        choices=("multiclass", "binary", "multilabel", "regression"),
        default=S,
        help="the task (default: multiclass)",
    )
    model.add_argument("--num-classes", type=_positive_int, default=S)
    model.add_argument(
        "--preprocessing",
        choices=PREPROCESSING_MODES,
        default=S,
        help="the preprocessing the base expects, e.g. tf ([-1, 1]) or unit "
        "([0, 1]) for a model file (default: the base's own; none for a model file)",
    )
    if not tune:
        model.add_argument(
            "--cut",
            type=_block,
            metavar="BLOCK|auto|none",
            default=S,
            help="build on this block's output (a block name or index) instead of "
            "the base's top; auto: the block the linear probe picks on the "
            "training data; none: the whole base (default: auto)",
        )
    data = parser.add_argument_group("data (the [data] section)")
    data.add_argument(
        "source",
        nargs="?",
        metavar="SRC",
        default=S,
        help="the training data, as --train (`tltf train photos/ --base demo`)",
    )
    data.add_argument(
        "--train",
        metavar="SRC",
        default=S,
        help="tfds:NAME[SPLIT], a folder of class subfolders, or a .npz file",
    )
    data.add_argument("--train-split", metavar="SPLIT", default=S, help="TFDS split")
    data.add_argument(
        "--val", metavar="SRC", default=S, help="validation data (same forms)"
    )
    data.add_argument(
        "--val-split", metavar="SPLIT", default=S, help='TFDS split, e.g. "test"'
    )
    data.add_argument(
        "--val-fraction",
        type=_fraction,
        metavar="F",
        default=S,
        help="hold out this fraction of --train for validation, e.g. 0.2",
    )
    data.add_argument(
        "--image-size",
        type=_image_size,
        metavar="SIZE",
        default=S,
        help="224 or 224x160 (default: the base's size)",
    )
    data.add_argument(
        "--resize", choices=("stretch", "crop", "pad"), default=S, help="resize policy"
    )
    data.add_argument("--batch-size", type=_positive_int, default=S)
    data.add_argument("--seed", type=_nonnegative_int, default=S)
    data.add_argument(
        "--augment",
        action="store_const",
        const=True,
        default=S,
        help="augment training images (flip, rotation, zoom, ...)",
    )

    schedule = parser.add_argument_group("schedule (the [schedule] section)")

    def searched(text: str) -> str:
        # `tltf tune` takes these from tune.search_space (and picks its best
        # trial by --objective): `TuneConfig` refuses them with that fix, and
        # its --help does not offer them.
        return argparse.SUPPRESS if tune else text

    schedule.add_argument(
        "--head-epochs",
        type=_epochs,
        metavar="N|auto",
        default=S,
        help="stage-1 epochs; auto: until the head's training loss converges "
        f"(default: {D['head_epochs']})",
    )
    schedule.add_argument(
        "--fine-tune-epochs",
        type=_epochs,
        metavar="N|auto",
        default=S,
        help="stage-2 epochs; auto: from a step budget "
        f"(default: {D['fine_tune_epochs']})",
    )
    schedule.add_argument(
        "--head-lr",
        type=_learning_rate,
        metavar="LR|find",
        default=S,
        help=searched(
            "stage-1 learning rate; find: run the LR finder first "
            f"(default: {_show(D['head_lr'])})"
        ),
    )
    schedule.add_argument(
        "--fine-tune-lr",
        type=_fine_tune_lr,
        metavar="LR|auto|find",
        default=S,
        help=searched(
            "stage-2 learning rate; auto: 1e-4, or 3e-4 from 1,000 training "
            "images (and 15 a class); find: run the LR finder when stage 2 starts "
            f"(default: {_show(D['fine_tune_lr'])})"
        ),
    )
    schedule.add_argument(
        "--unfreeze",
        type=_unfreeze,
        metavar="K|all|auto|A..B",
        default=S,
        help=searched(
            "top blocks to unfreeze in stage 2; auto: the depth the linear probe "
            "recommends, or every block from 1,000 training images (and 15 a "
            "class); A..B: the blocks from A to B, both included (names or "
            "0-based positions, e.g. 0..1 for the two bottom blocks) (default: "
            f"{D['unfreeze']})"
        ),
    )
    if not tune:
        schedule.add_argument(
            "--head-steps",
            type=_nonnegative_int,
            metavar="N",
            default=S,
            help="stage-1 step budget of --head-epochs auto; 0: the closed-form "
            f"ridge head alone (default: {D['head_steps']})",
        )
    schedule.add_argument(
        "--head-init",
        choices=("ridge", "random"),
        default=S,
        help="start a linear head from the closed-form ridge classifier, or "
        f"from Keras's initialisation (default: {D['head_init']})",
    )
    schedule.add_argument(
        "--head-l2",
        type=_head_l2,
        metavar="STRENGTH|auto",
        default=S,
        help="L2 penalty on the head's kernel while training; auto: the "
        "ridge's own for regression, scikit-learn's C=1 for multi-label, none "
        f"for classifiers; 0: none (default: {D['head_l2']})",
    )
    keep_best = TuneConfig().schedule.keep_best if tune else D["keep_best"]
    schedule.add_argument(
        "--keep-best",
        action=argparse.BooleanOptionalAction,
        default=S,
        help="restore the best weights, so stage 2 never ends worse than "
        f"stage 1 (default: {'on' if keep_best else 'off'}"
        + (", as keras-tuner scores a trial by its best epoch)" if tune else ")"),
    )
    schedule.add_argument(
        "--fine-tune-patience",
        type=_positive_int,
        metavar="N",
        default=S,
        help="end stage 2 once N epochs in a row were not kept by --keep-best "
        "(default: every stage-2 epoch runs)",
    )
    schedule.add_argument(
        "--bn",
        choices=("frozen", "affine", "train", "adapt"),
        default=S,
        help=searched(
            "BatchNorm policy of stage 2; adapt: frozen, after re-estimating the "
            "BN statistics on the training images (AdaBN) (default: frozen)"
        ),
    )
    schedule.add_argument(
        "--lr-decay",
        type=_positive_float,
        default=S,
        help=searched("per-block stage-2 rate decay, e.g. 0.7 (default: none)"),
    )
    schedule.add_argument(
        "--lr-policy",
        choices=("uniform", "auto_rgn"),
        default=S,
        help="auto_rgn: per-block stage-2 rates from relative gradient norms "
        "(Auto-RGN) (default: uniform)",
    )
    schedule.add_argument(
        "--regularize",
        type=_regularize,
        metavar="l2sp|ALPHA",
        default=S,
        help="L2-SP: pull stage 2 toward the pretrained weights (l2sp: strength "
        "0.01; a number: that strength) (default: none)",
    )
    schedule.add_argument(
        "--wise",
        type=_wise,
        metavar="ALPHA|auto",
        default=S,
        help="WiSE-FT: end at (1 - ALPHA) x stage 1 + ALPHA x the fine-tuned "
        "weights; auto picks ALPHA on the validation data or the held-out slice "
        "(default: none)",
    )
    schedule.add_argument("--label-smoothing", type=_fraction, default=S)
    schedule.add_argument(
        "--loss",
        metavar="NAME|auto",
        default=S,
        help="a Keras loss name, e.g. categorical_focal_crossentropy; auto: the "
        "task's own (default: auto)",
    )
    schedule.add_argument("--class-weight", choices=("balanced",), default=S)
    schedule.add_argument(
        "--monitor",
        default=S,
        help=searched("metric that picks best.keras (default: val_loss)"),
    )
    if tune:
        search = parser.add_argument_group("tuning (the [tune] section)")
        search.add_argument("--tuner", default=S, help="search algorithm")
        search.add_argument("--max-trials", type=_positive_int, default=S)
        search.add_argument("--objective", default=S, help="metric to optimise")
        search.add_argument(
            "--soup",
            type=_nonnegative_int,
            metavar="N",
            default=S,
            help="also write soup.keras: a greedy soup of the best N trials, "
            "chosen on the validation data (default: 0, none)",
        )
        search.add_argument(
            "--refit",
            action=argparse.BooleanOptionalAction,
            default=S,
            help="also write refit.keras: the best values trained once more on "
            "the training and validation images together, with fine_tune's "
            "auto epochs and stage-2 guard (default: off)",
        )
    run = parser.add_argument_group("run folder")
    run.add_argument(
        "--out",
        metavar="DIR",
        default=None,
        help="run folder (default: runs/<command>-<timestamp>)",
    )
    run.add_argument(
        "--resume",
        action="store_true",
        help="continue the interrupted run in --out (uses its config.yaml)",
    )
    run.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run in --out (once the new config and data are valid)",
    )
    _add_verbosity(run)


def _add_verbosity(group) -> None:
    group.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="no progress bars or stage lines",
    )


def _add_run_commands(commands) -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    train = commands.add_parser(
        "train",
        help="fine-tune a model and write a run folder",
        description="Builds a model on a base, fine-tunes it with the two-stage\n"
        "schedule, and writes a run folder.",
        epilog=_TRAIN_EPILOG,
        formatter_class=formatter,
    )
    _add_config_arguments(train, tune=False)
    train.set_defaults(handler=_cmd_train)

    tune = commands.add_parser(
        "tune",
        help="search the fine-tuning hyperparameters",
        description="Searches how many blocks to unfreeze, the learning rates and\n"
        "the head with keras-tuner (stage 1 shared between trials), and writes a\n"
        "run folder.",
        epilog=_TUNE_EPILOG,
        formatter_class=formatter,
    )
    _add_config_arguments(tune, tune=True)
    tune.set_defaults(handler=_cmd_tune)

    evaluate = commands.add_parser(
        "evaluate",
        help="per-class metrics, confusion matrix and top-k accuracy",
        description="Evaluates a model on labelled data.",
        epilog=_EVALUATE_EPILOG,
        formatter_class=formatter,
    )
    evaluate.add_argument("model", metavar="MODEL", help=".keras file or run folder")
    evaluate.add_argument(
        "source", nargs="?", metavar="SRC", help="the labelled data, as --data"
    )
    evaluate.add_argument(
        "--data", metavar="SRC", help="tfds:NAME[SPLIT], a folder or a .npz file"
    )
    evaluate.add_argument("--split", metavar="SPLIT", help="TFDS split (default: test)")
    evaluate.add_argument(
        "--data-dir",
        metavar="DIR",
        help="TFDS data folder (default: the run's data.data_dir)",
    )
    evaluate.add_argument("--top-k", type=_positive_int, default=5, metavar="K")
    evaluate.add_argument("--batch-size", type=_positive_int, default=32)
    evaluate.add_argument("--resize", choices=("stretch", "crop", "pad"), default=None)
    evaluate.add_argument(
        "--out",
        metavar="DIR",
        help="folder for report.json and confusion.png (default: "
        "RUN/eval-<timestamp> for a run, else runs/eval-<timestamp>)",
    )
    _add_verbosity(evaluate)
    evaluate.set_defaults(handler=_cmd_evaluate)

    predict = commands.add_parser(
        "predict",
        help="top-k labels and scores for images",
        description="Predicts the top-k classes of images.",
        epilog=_PREDICT_EPILOG,
        formatter_class=formatter,
    )
    predict.add_argument("model", metavar="MODEL", help=".keras file or run folder")
    predict.add_argument(
        "inputs", metavar="INPUT", nargs="+", help="image files, folders or .npz files"
    )
    predict.add_argument("--top-k", type=_positive_int, default=3, metavar="K")
    predict.add_argument(
        "--output", metavar="FILE", help=".csv or .json (default: CSV on stdout)"
    )
    predict.add_argument("--batch-size", type=_positive_int, default=32)
    predict.add_argument("--resize", choices=("stretch", "crop", "pad"), default=None)
    predict.set_defaults(handler=_cmd_predict)

    export = commands.add_parser(
        "export",
        help="export to .keras, SavedModel or TFLite",
        description="Exports a model for serving or for devices.",
        epilog=_EXPORT_EPILOG,
        formatter_class=formatter,
    )
    export.add_argument("model", metavar="MODEL", help=".keras file or run folder")
    export.add_argument(
        "--format",
        choices=("keras", "savedmodel", "tflite"),
        default=None,
        help="default: from the --output suffix (.keras, .tflite, else a SavedModel "
        "folder), else tflite",
    )
    export.add_argument(
        "--quantize",
        choices=("none", "float16", "dynamic", "int8"),
        default="none",
        help="TFLite quantization (default: none, float32)",
    )
    export.add_argument(
        "--representative",
        metavar="SRC",
        help="images for --quantize int8 calibration (folder, .npz, tfds:NAME[SPLIT])",
    )
    export.add_argument(
        "--samples",
        type=_positive_int,
        default=100,
        help="calibration images read from --representative (default: 100)",
    )
    export.add_argument(
        "--output",
        metavar="PATH",
        help="file or folder to write (default: next to the model)",
    )
    export.set_defaults(handler=_cmd_export)


# -- train and tune ---------------------------------------------------------------
def _source_first(args: argparse.Namespace, flag: str, what: str) -> None:
    """`tltf train photos/` or `tltf evaluate RUN photos/`: data given first, in
    place of its flag (`--train`, `--data`). Given both ways, a usage error."""
    source = getattr(args, "source", None)
    if source is None:
        return
    given = getattr(args, flag, None)
    if given is not None:
        raise _config_error(
            f"the {what} is given twice: {source!r} and --{flag} {given!r}; give "
            "it once."
        )
    setattr(args, flag, source)


def _config_overrides(args: argparse.Namespace) -> dict:
    _source_first(args, "train", "training data")  # `tltf train photos/`
    overrides: dict = {}
    for dest, (section, key) in _CONFIG_FLAGS.items():
        if hasattr(args, dest):
            overrides.setdefault(section, {})[key] = getattr(args, dest)
    for item in args.set:
        overrides = merge(overrides, parse_assignment(item))
    return overrides


def _resolve_config(args: argparse.Namespace, cls):
    """The config of `train`/`tune`: the file, then flags, then --set."""

    overrides = _config_overrides(args)
    if args.resume:
        if args.out is not None and not runs.is_run_folder(args.out):
            RunFolder(args.out, resume=True)  # names what is not a run first
        if args.config or overrides:
            given = (["--config"] if args.config else []) + [
                f"{section}.{key}"
                for section, keys in overrides.items()
                for key in keys
            ]
            raise _config_error(
                "--resume continues the run with its own config.yaml; drop "
                f"{', '.join(given)}, or start a new run (another --out or "
                "--overwrite)."
            )
        if args.out is None:
            raise _config_error("--resume needs --out: the run folder to continue.")
        RunFolder(args.out, resume=True)  # checks there is a run to resume
        return cls.from_dict(load_config_file(os.path.join(args.out, CONFIG_FILE)))
    file_values = load_config_file(args.config) if args.config else {}
    return cls.from_dict(merge(file_values, overrides))


def _config_error(message: str):
    return ConfigError(message)


def _print_config(config) -> None:
    import yaml

    print(yaml.safe_dump(config.to_dict(), sort_keys=False, default_flow_style=None))


def _verbose(args: argparse.Namespace):
    """Keras's verbosity: progress bars on a terminal, one line per epoch in a log.

    Piped or redirected (a log file, CI, a notebook's `!tltf`), progress bars
    would print every update as a line of control characters.
    """
    if getattr(args, "quiet", False):
        return 0
    return "auto" if sys.stdout.isatty() else 2


def _run(args: argparse.Namespace, config_class, run_function) -> dict | None:
    """`train` and `tune`: resolve the config, then print it or run it.

    `--print-config` checks what the run checks before it reads any data: the
    required keys, the base and the input size.
    """

    config = resolve_base(_resolve_config(args, config_class).require())
    resolve_image_size(config)
    if args.print_config:
        _print_config(config)
        return None
    return run_function(
        config,
        args.out,
        resume=args.resume,
        overwrite=args.overwrite,
        verbose=_verbose(args),
        command=["tltf", *sys.argv[1:]],
    )


def _cmd_train(args: argparse.Namespace) -> int:
    summary = _run(args, TrainConfig, runs.run_training)
    if summary is None:
        return 0
    best = summary["best"]
    text = f"tltf: wrote {summary['out_dir']}"
    if best["value"] is not None:
        text += (
            f" (best {best['monitor']} {best['value']:.4g} at epoch {best['epoch']})"
        )
    elif best["monitor"] is None:
        kept = summary["kept"]
        text += (
            " (best.keras: the model fine_tune ended with, kept at epoch "
            f"{kept['epoch']}, stage {kept['stage']})"
        )
    if summary.get("wise") is not None:
        text += (
            f"; best.keras holds its WiSE-FT mix with stage 1 (wise={summary['wise']})"
        )
    print(text)
    hint = still_improving_hint(summary)
    if hint:
        print(f"tltf: {hint}")
    return 0


def best_values_text(values: dict) -> str:
    """A search's best values in one line, numbers in 4 significant digits (the
    run's summary.json keeps every digit).

    Example:

    >>> best_values_text({"unfreeze_blocks": 6, "fine_tune_lr": 6.111990276556007e-05})
    'unfreeze_blocks=6, fine_tune_lr=6.112e-05'
    """
    return ", ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
        for k, v in values.items()
    )


def _cmd_tune(args: argparse.Namespace) -> int:
    summary = _run(args, TuneConfig, runs.run_tuning)
    if summary is None:
        return 0
    best = summary["best"]["hyperparameters"]
    text = best_values_text(best)
    print(f"tltf: wrote {summary['out_dir']}" + (f" (best: {text})" if text else ""))
    refit = summary.get("refit")
    if refit:
        images = f"{refit['images']:,} " if refit["images"] else ""
        path = os.path.join(summary["out_dir"], refit["model"])
        print(
            f"tltf: {refit['model']}: the best values trained again on all "
            f"{images}labelled images (training and validation), so no image is "
            f"left to score it: evaluate it on a test set (tltf evaluate {path} "
            "--data TEST)."
        )
    return 0


# -- evaluate, predict, export ------------------------------------------------------
def _load_cli_model(path: str, compile: bool = True):
    """(model, run folder or None) for a .keras file or a run folder.

    `compile=False` loads without the optimizer, for inference: a tuned model's
    file holds an unbuilt optimizer, which Keras warns it cannot restore. A run
    folder whose `tltf tune` also wrote `soup.keras` or `refit.keras` gets one
    line (on stderr) that names them.
    """
    from pathlib import Path

    target = Path(path).expanduser()
    if target.is_dir():
        for name in (BEST_MODEL, LAST_MODEL):
            if (target / name).is_file():
                others = [
                    o for o in (REFIT_MODEL, SOUP_MODEL) if (target / o).is_file()
                ]
                if others:
                    print(
                        f"tltf: note: read {name} of {path}, which also holds "
                        f"{' and '.join(others)}: pass "
                        f"{os.path.join(path, others[0])} to use that instead.",
                        file=sys.stderr,
                    )
                return load_model(target / name, compile=compile), find_run(target)
        raise ModelError(
            f"{path!r} is a folder without {BEST_MODEL} or {LAST_MODEL}. Pass a .keras "
            "file or a run folder written by `tltf train`."
        )
    if not target.exists():
        raise ModelError(
            f"No such model: {path!r}. Pass a .keras file or a run folder written by "
            "`tltf train`."
        )
    return load_model(target, compile=compile), find_run(target)


def _model_image_size(model) -> tuple[int, int]:
    height, width = model.input_shape[1:3]
    if height is None or width is None:
        raise ModelError(
            f"Model {model.name!r} takes images of any size (input shape "
            f"{model.input_shape}); tltf needs a fixed size to resize inputs to."
        )
    return int(height), int(width)


def _run_config(run_dir):
    if run_dir is None or not (run_dir / CONFIG_FILE).is_file():
        return None
    data = load_config_file(run_dir / CONFIG_FILE)
    data.pop("tune", None)
    return TrainConfig.from_dict(data)


def _stamped(parent, prefix: str):
    return default_run_dir(prefix, root=parent)


def _labelled_data(args, model, run_dir):
    """The labelled `DataBundle` and class names that `evaluate` reads."""
    from pathlib import Path

    size = _model_image_size(model)
    names = class_names_of(model)
    config = _run_config(run_dir)
    resize = args.resize or (config.data.resize if config else "stretch")
    if args.data is None:
        if config is None:
            raise ConfigError(
                f"Pass --data: {args.model!r} is not in a run folder, so there is no "
                "validation data to default to."
            )
        data = load_run_data(config, size)
        if data.validation is None:
            raise ConfigError(
                f"The run in {str(run_dir)!r} has no validation data. Pass --data "
                "(the labelled data to evaluate on)."
            )
        return data, data.class_names or names
    source, split = parse_source(args.data)
    split = split or args.split
    kwargs = {}
    if source.startswith("tfds:"):
        kwargs["split"] = split or "test"
    elif split is not None:
        raise ConfigError(
            f"--split {split!r} selects a TFDS split, but --data {args.data!r} is not "
            "tfds:NAME."
        )
    if names and Path(source).expanduser().is_dir():
        # Subfolders labelled by the model's classes: a test folder may hold some.
        kwargs["class_names"] = names
    data = load_data(
        source,
        image_size=size,
        batch_size=args.batch_size,
        shuffle=False,
        cache=False,
        resize=resize,
        task=config.model.task if config else "multiclass",
        data_dir=args.data_dir or (config.data.data_dir if config else None),
        **kwargs,
    )
    if names and data.class_names and list(data.class_names) != list(names):
        raise DataError(
            f"--data {args.data!r} has the classes {data.class_names}, but the model "
            f"was trained on {names}. The labels would not line up: give the data "
            "one subfolder per class of the model, named as in training."
        )
    return data, names or data.class_names


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from pathlib import Path

    _source_first(args, "data", "labelled data")  # `tltf evaluate RUN photos/`
    if args.out:  # refused before the model is read, and before anything is written
        check_report_path(Path(args.out).expanduser() / "report.json")
        check_figure_path(Path(args.out).expanduser() / "confusion.png")
    model, run_dir = _load_cli_model(args.model, compile=False)
    data, names = _labelled_data(args, model, run_dir)
    report = evaluate(model, data, class_names=names, top_k=args.top_k)
    out = (
        Path(args.out).expanduser()
        if args.out
        else _stamped(run_dir if run_dir is not None else "runs", "eval")
    )
    report.to_json(out / "report.json")
    files = [out / "report.json"]
    # Say what was evaluated: the --data given, or the run's validation data.
    what = str(args.data) if args.data else "validation"
    if report.plot_confusion(out / "confusion.png", data=what) is not None:
        files.append(out / "confusion.png")
    report.print()  # the result: shown with --quiet too
    print(f"tltf: wrote {' and '.join(str(f) for f in files)}")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    if args.output:  # refused before the model is read
        check_predictions_path(os.path.expanduser(args.output))
    model, _ = _load_cli_model(args.model, compile=False)
    names = class_names_of(model)
    rows = []
    for item in args.inputs:
        for row in predict(
            model,
            item,
            class_names=names,
            top_k=args.top_k,
            batch_size=args.batch_size,
            resize=args.resize or "stretch",
        ):
            if "index" in row:  # an .npz row: name it by file and index
                row = {"file": f"{item}[{row.pop('index')}]", **row}
            rows.append(row)
    if args.output:
        path = write_predictions(rows, args.output)
        print(f"tltf: wrote {len(rows)} predictions to {path}", file=sys.stderr)
    else:
        _print_csv(rows)
    return 0


def _print_csv(rows) -> None:
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as folder:
        path = write_predictions(rows, Path(folder) / "predictions.csv")
        sys.stdout.write(path.read_text())


_EXPORT_SUFFIX = {"keras": ".keras", "savedmodel": "", "tflite": ".tflite"}


def _cmd_export(args: argparse.Namespace) -> int:
    from pathlib import Path

    quantize = None if args.quantize == "none" else args.quantize
    fmt = args.format
    if fmt is None and args.output:
        fmt = format_from_path(args.output)
    fmt = fmt or "tflite"
    if quantize is not None and fmt != "tflite":
        raise ConfigError(
            f"--quantize {args.quantize} applies to TFLite exports only. Received: "
            f"--format {fmt}. Use --format tflite (or an --output ending in .tflite)."
        )
    if quantize == "int8" and not args.representative:
        raise ConfigError(
            "--quantize int8 needs --representative DATA: typical images (a folder, "
            "image files' folder, .npz or tfds:NAME[SPLIT]) to calibrate the integer "
            "ranges. Or use --quantize dynamic, which needs no data."
        )
    # A .keras export keeps the training config; the others need no optimizer.
    model, run_dir = _load_cli_model(args.model, compile=fmt == "keras")
    if args.output:
        output = Path(args.output).expanduser()
    else:
        folder = (
            run_dir if run_dir is not None else Path(args.model).expanduser().parent
        )
        name = "savedmodel" if fmt == "savedmodel" else "model"
        if quantize:
            name += f"-{quantize}"
        output = folder / f"{name}{_EXPORT_SUFFIX[fmt]}"
    representative = None
    if args.representative:
        representative = args.representative
        if representative.startswith("tfds:"):
            name, split = parse_source(representative)
            config = _run_config(run_dir)
            representative = load_data(
                name,
                image_size=_model_image_size(model),
                split=split or "train",
                shuffle=False,
                cache=False,
                data_dir=config.data.data_dir if config else None,
            )
    path = export_model(
        model,
        output,
        format=fmt,
        quantize=quantize,
        representative_data=representative,
        num_calibration=args.samples,
    )
    print(f"tltf: wrote {path}")
    return 0


def _cmd_bases(args: argparse.Namespace) -> int:
    import fnmatch

    if args.name in SHIPPED_BASES:
        return _show_shipped(SHIPPED_BASES[args.name])
    if args.name is not None:
        spec = get_spec(args.name)
        return _print_base(
            spec.name,
            constructor=spec.constructor_name,
            family=spec.family,
            preprocessing=spec.preprocessing,
            default_size=spec.default_size,
            min_size=spec.min_size,
        )
    shipped = [
        base
        for base in SHIPPED_BASES.values()
        if fnmatch.fnmatch(base.name, args.filter.lower())
    ]
    names = list_bases(args.filter)
    if not names and not shipped:
        raise ConfigError(
            f"No base matches --filter {args.filter!r}. Run `tltf bases` for the "
            "whole registry."
        )
    rows = [("name", "family", "default", "min")]
    if args.blocks:
        rows = [(*rows[0], "blocks", "params")]
    entries = [(base.name, *_shipped_sizes(base)) for base in shipped]
    entries += [
        (n, REGISTRY[n].family, REGISTRY[n].default_size, REGISTRY[n].min_size)
        for n in names
    ]
    for name, family, default, low in entries:
        row = (name, family, str(default), str(low))
        if args.blocks:
            blocks, params = _block_stats(name)
            row += (str(len(blocks)), f"{params / 1e6:.1f}M")
        rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = [
            f"{cell:<{width}}" if i < 2 else f"{cell:>{width}}"
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        print("  ".join(cells).rstrip())
    for base in shipped:
        print(f"\n{base.name}: {base.description}.")
    stored = [
        (path, info)
        for path, info in stored_bases()
        if fnmatch.fnmatch(path.name, args.filter.lower())
    ]
    if stored:
        print(
            f"\nPretrained in the base store ({store_dir()}); pass the folder as --base:"
        )
        for path, info in stored:
            about = ", ".join(
                f"{label} {info[key]}"
                for key, label in [("task", "on"), ("val_accuracy", "val accuracy")]
                if key in info
            )
            print(f"  {path}" + (f"  ({about})" if about else ""))
    return 0


def _shipped_record(base) -> dict:
    """The `base.json` of a shipped base ({} when this install lacks it)."""
    return read_base_record(base.path) or {}


def _shipped_sizes(base) -> tuple[str, int | str, int | str]:
    """(family, input size, minimum size) of a shipped base, from its base.json."""

    record = _shipped_record(base)
    info = record.get("info", {})
    spec = REGISTRY.get(info.get("architecture", ""))
    shape = record.get("input_shape") or ["-"]
    return (
        spec.family if spec else "saved",
        shape[0],
        info.get("min_size", spec.min_size if spec else "-"),
    )


def _show_shipped(base) -> int:
    """`tltf bases demo`: a shipped base's folder, architecture, sizes and blocks."""

    path = shipped_base_path(base.name)  # a missing folder raises, with the fix
    record = _shipped_record(base)
    family, size, low = _shipped_sizes(base)
    return _print_base(
        base.name,
        about=base.description,
        folder=path,
        architecture=record.get("info", {}).get("architecture", "-"),
        family=family,
        preprocessing=record.get("preprocessing", "-"),
        default_size=size,
        min_size=low,
    )


def _print_base(name: str, **fields) -> int:
    """`tltf bases NAME`: one aligned line per field, then the block statistics."""
    blocks, params = _block_stats(name)
    rows = {"name": name, **fields}
    rows["parameters"] = f"{params:,} (without the top)"
    rows["blocks"] = f"{len(blocks)}, bottom to top: {' '.join(blocks)}"
    for key, value in rows.items():
        print(f"{key.replace('_', ' ') + ':':15s}{value}")
    return 0


def _block_stats(name: str) -> tuple[list[str], int]:
    """Block names and parameter count of a base (a registry one: random weights)."""
    import keras

    base = load_base(name, weights=None)
    stats = list(base.block_map.names), int(base.model.count_params())
    del base
    keras.backend.clear_session()
    return stats


# -- rank ------------------------------------------------------------------------
_RANK_EPILOG = """\
Each base runs once, frozen, over the labelled images; LogME, a kNN and a ridge
probe (leave-one-out) score its features, on a seeded sample of at most
about 2,000 of the images (--max-images). No training: seconds per base. A
base is a registry name, demo, or a saved base folder (or a .keras file of a
base model). See docs/ranking.md.

examples:
  tltf rank photos/ --bases demo vgg16 mobilenet_v3_small
  tltf rank --data photos/ --bases demo,vgg16    (the same data, as a flag)
  tltf rank --data train.npz --bases vgg16 bases/mine --weights-dir weights/ \\
      --out rank.csv --plot rank.png
  tltf rank --data faces/ --bases emotion.h5 vgg16 --preprocessing emotion.h5=tf
"""


def _add_rank_command(commands) -> None:
    rank = commands.add_parser(
        "rank",
        help="rank candidate bases on labelled data, before any training",
        description="Scores how well each base's frozen features suit the data "
        "(LogME, kNN and ridge-probe leave-one-out accuracy) and prints the "
        "ranking.",
        epilog=_RANK_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    rank.add_argument(
        "source", nargs="?", metavar="SRC", help="the labelled data, as --data"
    )
    rank.add_argument(
        "--data",
        metavar="SRC",
        help="labelled images: a folder (one subfolder per class), a .npz file "
        "or tfds:NAME[SPLIT] (default split: train)",
    )
    rank.add_argument(
        "--bases",
        metavar="BASE",
        nargs="+",
        required=True,
        help="the candidates, separated by spaces or commas",
    )
    rank.add_argument(
        "--image-size",
        type=_positive_int,
        default=None,
        help="images are resized to this size; registry bases are built at it "
        "(default: the candidates' own size when they share one, such as 64 for "
        "demo, else 224)",
    )
    rank.add_argument(
        "--score",
        choices=("logme", "knn", "ridge"),
        default="logme",
        help="the score that orders the table (default: logme)",
    )
    rank.add_argument(
        "--every",
        type=_positive_int,
        default=None,
        help="also probe every N-th block below the top (the ridge score is "
        "then the best block's) (default: the top block only)",
    )
    rank.add_argument("--knn", type=_positive_int, default=5, help="k (default: 5)")
    rank.add_argument(
        "--max-images",
        type=_image_count,
        default=PROBE_IMAGES,
        metavar="N",
        help="score a seeded sample of at most about N images, stratified by "
        f"class, or 'all' (default: {PROBE_IMAGES})",
    )
    rank.add_argument("--batch-size", type=_positive_int, default=32)
    rank.add_argument("--weights-dir", metavar="DIR", help="offline weights folder")
    rank.add_argument(
        "--preprocessing",
        metavar="[BASE=]MODE",
        nargs="+",
        default=[],
        help="the preprocessing a model-file candidate (.keras, .h5) expects: "
        f"one of {', '.join(PREPROCESSING_MODES)}, e.g. tf ([-1, 1]). MODE alone "
        "applies to every model file; BASE=MODE to that one (default: the "
        "model's own where tltf built it or it is a Keras Applications "
        "architecture, else none: the raw [0, 255] pixels; registry and saved "
        "bases use their own)",
    )
    rank.add_argument("--out", metavar="FILE", help="write the table as CSV")
    rank.add_argument("--plot", metavar="FILE", help="write the plot as PNG")
    rank.add_argument(
        "--quiet", action="store_true", help="print the table only, no progress"
    )
    rank.set_defaults(handler=_cmd_rank)


#: `tltf rank`'s image size when its candidates have no one size of their own.
RANK_IMAGE_SIZE = 224


def _rank_image_size(bases: list[str]) -> int:
    """The candidates' own input size when they share one, else `RANK_IMAGE_SIZE`.

    A base saved at another size is rebuilt at this one (a registry
    architecture) or gets resized images: a note says which, and how to rank at
    its own size.
    """
    own = {}
    for base in bases:
        size = default_image_size(base)  # an unknown name raises, with suggestions
        if size is not None and size[0] == size[1]:
            own[base] = size[0]
    sizes = set(own.values())
    if len(sizes) == 1 and len(own) == len(bases):
        return sizes.pop()
    for base, size in own.items():
        if size != RANK_IMAGE_SIZE and saved_base_folder(base) is not None:
            print(
                f"tltf: note: {base} was saved at {size} px and is ranked at "
                f"{RANK_IMAGE_SIZE} px with the others; --image-size {size} ranks it "
                "at its own size."
            )
    return RANK_IMAGE_SIZE


def _rank_preprocessing(given: list[str], bases: list[str]) -> dict[str, str]:
    """`{model file: mode}` from `tltf rank --preprocessing [BASE=]MODE ...`.

    A bare MODE applies to every model-file candidate; BASE=MODE to that one
    (a later entry wins). Registry and saved bases carry their own
    preprocessing, so naming one is an error, as is a MODE with no model file
    to apply to: both would otherwise be ignored without a word.
    """
    files = [b for b in bases if is_model_file(b)]
    modes: dict[str, str] = {}
    for entry in given:
        name, _, mode = entry.rpartition("=")
        if mode not in PREPROCESSING_MODES:
            raise ConfigError(
                f"--preprocessing {entry!r}: expected MODE or BASE=MODE with MODE "
                f"one of {', '.join(PREPROCESSING_MODES)}."
                + suggest(mode, PREPROCESSING_MODES)
            )
        if not name:
            if not files:
                raise ConfigError(
                    f"--preprocessing {mode} applies to model-file candidates "
                    "(.keras, .h5), and none of --bases is one: registry and saved "
                    "bases use their own preprocessing. Drop --preprocessing."
                )
            modes.update(dict.fromkeys(files, mode))
        elif name in files:
            modes[name] = mode
        elif name in bases:
            raise ConfigError(
                f"--preprocessing {entry!r}: {name} is not a model file, and a "
                "registry or saved base uses its own preprocessing. To rank it "
                "with another, call tltf.rank_bases with "
                f"tltf.load_base({name!r}, preprocessing={mode!r})."
            )
        else:
            raise ConfigError(
                f"--preprocessing {entry!r}: {name} is not one of --bases "
                f"({', '.join(bases)}). Write BASE=MODE with BASE as given there."
                + suggest(name, bases)
            )
    return modes


def _rank_model_file(path: str, preprocessing: str | None):
    """A model-file candidate: the model, or a Base with `preprocessing`."""
    model = load_model(path, compile=False)
    if preprocessing is None:
        return model
    try:
        return load_base(model, preprocessing=preprocessing)
    except ConfigError as error:  # e.g. a model tltf built: it has its own
        raise ConfigError(
            f"--preprocessing {preprocessing} for {path}: {error}"
        ) from None


def _split_bases(bases: list[str]) -> list[str]:
    """`--bases a b` and `--bases a,b` alike; a path that exists stays whole.

    Example:

    >>> _split_bases(["demo,mobilenet_v2", "efficientnet_b0"])
    ['demo', 'mobilenet_v2', 'efficientnet_b0']
    """
    return [
        part
        for name in bases
        for part in ([name] if os.path.exists(name) else name.split(","))
        if part
    ]


def _cmd_rank(args: argparse.Namespace) -> int:
    from pathlib import Path

    _source_first(args, "data", "labelled data")  # `tltf rank photos/ --bases ...`
    if args.data is None:
        raise _config_error(
            "the labelled data is missing: give it first (`tltf rank photos/ "
            "--bases demo vgg16`) or as --data."
        )
    args.bases = _split_bases(args.bases)
    modes = _rank_preprocessing(args.preprocessing, args.bases)  # before any data
    if args.out:  # refused before any base is read
        check_table_path(Path(args.out).expanduser())
    if args.plot:
        check_figure_path(Path(args.plot).expanduser())
    source, split = parse_source(args.data)
    kwargs = {"split": split or "train"} if source.startswith("tfds:") else {}
    if split is not None and not source.startswith("tfds:"):
        raise ConfigError(
            f"--data {args.data!r} selects a split, but only tfds:NAME[SPLIT] "
            "sources have splits."
        )
    data = load_data(
        source,
        image_size=args.image_size or _rank_image_size(args.bases),
        batch_size=args.batch_size,
        shuffle=False,
        cache=False,
        **kwargs,
    )
    candidates = [
        _rank_model_file(b, modes.get(b)) if is_model_file(b) else b for b in args.bases
    ]
    if any(not isinstance(c, str) for c in candidates):
        candidates = dict(zip(args.bases, candidates, strict=True))
    result = rank_bases(
        candidates,
        data,
        score=args.score,
        every=args.every,
        knn=args.knn,
        batch_size=args.batch_size,
        max_images=args.max_images,
        verbose=0 if args.quiet else 1,
        **({"weights_dir": args.weights_dir} if args.weights_dir else {}),
    )
    if args.quiet:
        print(result)
    files = []
    if args.out:
        files.append(result.to_csv(Path(args.out).expanduser()))
    if args.plot:
        result.plot(Path(args.plot).expanduser())
        files.append(Path(args.plot).expanduser())
    if files:
        print(f"tltf: wrote {' and '.join(str(f) for f in files)}")
    if result.failed:  # the others are ranked and written; the exit status says so
        for message in result.failed.values():
            print(f"tltf: error: not ranked: {message}", file=sys.stderr)
        return 1
    return 0


# -- pretrain --------------------------------------------------------------------
_PRETRAIN_EPILOG = """\
Trains a registry architecture from scratch on one of tltf's procedural tasks
(no download) and saves it as a base folder, which --base takes in tltf train,
tune and rank. The defaults are the demo base's recipe, measured on
MobileNetV3Small (2.8 to 4.5 minutes on 2 CPU cores); a bigger architecture
learns slower, and a base that ends near chance gets a note. The folder is
written in one step at the end; an existing folder that is not a saved base is
refused before training.

examples:
  tltf pretrain mobilenet_v3_small --out bases/shapes
  tltf train --base bases/shapes --train photos/ --out runs/photos
  tltf pretrain mobilenet --arg alpha=0.5 --image-size 48 --epochs 8 --out bases/small
  tltf pretrain efficientnet_b0 --out bases/effb0    # 0.55 val accuracy, 7 minutes
"""


def _add_pretrain_command(commands) -> None:
    parser = commands.add_parser(
        "pretrain",
        help="pretrain a base from scratch on a procedural task",
        description="Pretrains a registry architecture from scratch on a "
        "procedural task and saves it as a base folder.",
        epilog=_PRETRAIN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "architecture",
        nargs="?",
        default=DEMO_BASE.architecture,
        help=f"a registry name from `tltf bases` (default: {DEMO_BASE.architecture})",
    )
    parser.add_argument(
        "--task",
        default=DEMO_BASE.task,
        choices=list(datasets.TASKS),
        help=f"the procedural source task (default: {DEMO_BASE.task})",
    )
    for flag, kind, default, about in [
        ("--images", _positive_int, DEMO_BASE.images, "training images"),
        ("--image-size", _positive_int, DEMO_BASE.image_size, "input size in px"),
        ("--epochs", _positive_int, DEMO_BASE.epochs, "training epochs"),
        ("--batch-size", _positive_int, DEMO_BASE.batch_size, "batch size"),
        ("--learning-rate", float, DEMO_BASE.learning_rate, "peak learning rate"),
        ("--bn-momentum", float, DEMO_BASE.bn_momentum, "BatchNorm momentum"),
        ("--seed", _nonnegative_int, DEMO_BASE.seed, "seed"),
    ]:
        parser.add_argument(
            flag, type=kind, default=default, help=f"{about} (default: {default})"
        )
    parser.add_argument(
        "--arg",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="a Keras constructor argument (value in YAML syntax), e.g. "
        "--arg alpha=0.5; repeatable",
    )
    parser.add_argument(
        "--out",
        metavar="DIR",
        default=None,
        help="the base folder to write (default: the base store, "
        "$TLTF_HOME/bases or ~/.cache/tltf/bases, under a name that spells out "
        "the recipe)",
    )
    _add_verbosity(parser)
    parser.set_defaults(handler=_cmd_pretrain)


def _constructor_args(items: list[str]) -> dict:
    """`--arg KEY=VALUE` flags as keyword arguments (values in YAML syntax)."""
    kwargs = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise ConfigError(
                f"Expected --arg KEY=VALUE, e.g. --arg alpha=0.5. Received: {item!r}"
            )
        kwargs[key] = parse_value(raw, f"--arg {item!r}")
    return kwargs


def _cmd_pretrain(args: argparse.Namespace) -> int:
    verbose = _verbose(args)
    base = pretrain(
        args.architecture,
        task=args.task,
        images=args.images,
        image_size=args.image_size,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        bn_momentum=args.bn_momentum,
        seed=args.seed,
        save_to=args.out,
        verbose=1 if verbose == "auto" else verbose,
        **_constructor_args(args.arg),
    )
    print(
        f"tltf: wrote {base.info['path']} (val accuracy "
        f"{base.info['val_accuracy']:.3f}); use it with --base {base.info['path']}"
    )
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    run_demo(
        k_values=args.k,
        seed=args.seed,
        out_dir=args.out,
        quick=args.quick,
        augment=args.augment,
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the `tltf` command line.

    Args:
        argv: list of str or None. The arguments, without the program name.
            Defaults to `sys.argv[1:]`.

    Returns:
        The exit status: 0 on success, 2 on a usage or configuration error.

    Example:

    >>> from tltf.cli import main
    >>> main(["bases", "--filter", "mobilenet*"])
    name                family        default  min
    mobilenet           mobilenet         224   32
    ...
    0
    """
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv:  # `tltf` alone: what it can do, as `git` shows it
        parser.print_help()
        return EXIT_ERROR
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, --version, or a usage error (status 2).
        return (
            exit_.code if isinstance(exit_.code, int) else int(exit_.code is not None)
        )
    import tltf  # noqa: F401  (imports TensorFlow quietly, before any command)

    try:
        return args.handler(args)
    except TltfError as error:
        print(f"tltf: error: {error}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as error:  # a path that cannot be read or written
        print(f"tltf: error: {_os_error_message(error)}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("tltf: interrupted", file=sys.stderr)
        return 130


def _os_error_message(error: OSError) -> str:
    """One line for a file-system error: what failed, on which path, the fix."""
    where = f" {error.filename!r}" if error.filename else ""
    reason = error.strerror or str(error)
    fixes = {
        "FileNotFoundError": "Check the path.",
        "PermissionError": "Check the permissions, or choose another path.",
        "IsADirectoryError": "Give a file path, not a folder.",
        "NotADirectoryError": "Give a folder path, not a file.",
    }
    fix = fixes.get(type(error).__name__, "Check the path and the free disk space.")
    return f"{reason}:{where}. {fix}" if where else f"{reason}. {fix}"


if __name__ == "__main__":
    sys.exit(main())
