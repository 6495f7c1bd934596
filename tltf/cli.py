"""The `tltf` command line: list the base registry, run the demo.

Every error tltf raises on purpose (a `tltf.errors.TltfError`) is printed as one
line, `tltf: error: <message>`, with exit status 2 and no traceback, like an
argparse usage error.

Example:

    $ tltf bases --filter "efficientnet*"
    $ tltf demo --k 5 10 20 --out runs/demo
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

#: Exit status of a usage or configuration error (as argparse uses).
EXIT_ERROR = 2

_BASES_EPILOG = """\
examples:
  tltf bases                          every registry name
  tltf bases --filter "efficientnet*" one family (shell-style pattern)
  tltf bases --filter "*v2*"
  tltf bases efficientnet_b0          one entry, with its preprocessing
"""

_DEMO_EPILOG = """\
The demo pretrains a small base on the procedural shapes_source task (about 4
minutes on 2 CPU cores, once; it is cached in $TLTF_HOME/bases or
~/.cache/tltf/bases), then compares transfer with training from scratch on
shapes_target with k labelled images per class (about 2.5 minutes).

examples:
  tltf demo                           k = 5, 10, 20; writes runs/demo-<timestamp>
  tltf demo --k 5 20 --seed 1 --out runs/demo-seed1
  tltf demo --quick                   tiny sizes: a smoke test, not a result
"""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def _nonnegative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The `tltf` argument parser, with the `bases` and `demo` subcommands."""
    parser = argparse.ArgumentParser(
        prog="tltf",
        description="Transfer learning for Keras and TensorFlow.",
        epilog="Run `tltf <command> --help` for a command's options and examples.",
    )
    from tltf import __version__

    parser.add_argument("--version", action="version", version=f"tltf {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="<command>", required=True)

    bases = commands.add_parser(
        "bases",
        help="list the base registry",
        description="Lists the registry's bases: name, family, ImageNet (default) "
        "input size and minimum input size.",
        epilog=_BASES_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    bases.add_argument(
        "name",
        nargs="?",
        help="show one base's registry entry (a registry or constructor name)",
    )
    bases.add_argument(
        "--filter",
        metavar="PATTERN",
        default="*",
        help='shell-style pattern on the name, e.g. "mobilenet*" (default: all)',
    )
    bases.set_defaults(handler=_cmd_bases)

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
    demo.set_defaults(handler=_cmd_demo)
    return parser


def _cmd_bases(args: argparse.Namespace) -> int:
    from tltf.bases.registry import REGISTRY, get_spec, list_bases

    if args.name is not None:
        spec = get_spec(args.name)
        print(f"name:          {spec.name}")
        print(f"constructor:   {spec.constructor_name}")
        print(f"family:        {spec.family}")
        print(f"preprocessing: {spec.preprocessing}")
        print(f"default size:  {spec.default_size}")
        print(f"min size:      {spec.min_size}")
        return 0
    names = list_bases(args.filter)
    if not names:
        from tltf.errors import ConfigError

        raise ConfigError(
            f"No base matches --filter {args.filter!r}. Run `tltf bases` for the "
            "whole registry."
        )
    rows = [("name", "family", "default", "min")]
    rows += [
        (
            n,
            REGISTRY[n].family,
            str(REGISTRY[n].default_size),
            str(REGISTRY[n].min_size),
        )
        for n in names
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print(
            f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  "
            f"{row[2]:>{widths[2]}}  {row[3]:>{widths[3]}}"
        )
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from tltf.demo import run_demo

    run_demo(k_values=args.k, seed=args.seed, out_dir=args.out, quick=args.quick)
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
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, --version, or a usage error (status 2).
        return (
            exit_.code if isinstance(exit_.code, int) else int(exit_.code is not None)
        )
    import tltf  # noqa: F401  (imports TensorFlow quietly, before any command)
    from tltf.errors import TltfError

    try:
        return args.handler(args)
    except TltfError as error:
        print(f"tltf: error: {error}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("tltf: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
