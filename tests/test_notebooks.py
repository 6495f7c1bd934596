"""The tutorial notebooks run top to bottom on a real Jupyter kernel, offline.

Each notebook is executed with nbclient on an ipykernel started with this
interpreter (the venv's), in a fresh working folder and a fresh, empty tltf store
(`TLTF_HOME`): a cold run, so the notebooks pretrain tltf's quick base themselves.
Any error in any cell fails the test. The committed notebooks must carry no outputs
and match their generator, `notebooks/_build.py`.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import sys
import time
import uuid
from pathlib import Path

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from jupyter_client.provisioning import LocalProvisioner
from nbclient import NotebookClient

from tests import processes

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))

#: Seconds one cell may run (a hung cell fails instead of blocking the suite).
CELL_TIMEOUT = 180
#: Seconds a whole notebook may take here. The goal is under 2 minutes on 2 idle
#: cores; the margin covers the other tests running beside it under xdist.
NOTEBOOK_LIMIT = 240

KERNEL_NAME = "tltf-notebook-test"
#: The notebook on choosing the base and the blocks (issue 15).
CHOOSING = "05_choosing_base_and_blocks.ipynb"


def _kernel_manager(tmp_path: Path) -> KernelManager:
    """A kernel manager whose only kernel runs this Python, in a fresh environment.

    The kernel gets an empty tltf store (`TLTF_HOME`) and its own IPython and
    temporary folders under `tmp_path`.

    A kernelspec of our own, rather than "python3", makes sure that the kernel
    runs the interpreter running the tests, whatever kernelspecs the machine has.
    """
    spec_dir = tmp_path / "kernels" / KERNEL_NAME
    spec_dir.mkdir(parents=True)
    (tmp_path / "tmp").mkdir()
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "tltf tests",
        "language": "python",
        "env": {
            "TLTF_HOME": str(tmp_path / "tltf_home"),
            "IPYTHONDIR": str(tmp_path / "ipython"),
            # The notebooks' tempfile.mkdtemp() folders land here, and go with it.
            "TMPDIR": str(tmp_path / "tmp"),
            "TF_CPP_MIN_LOG_LEVEL": "2",
        },
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    specs = KernelSpecManager(kernel_dirs=[str(tmp_path / "kernels")])
    manager = KernelManager(
        kernel_name=KERNEL_NAME,
        kernel_spec_manager=specs,
        connection_file=str(tmp_path / "connection.json"),
        kernel_id=str(uuid.uuid4()),
    )
    manager.provisioner = _Provisioner(
        kernel_id=manager.kernel_id, kernel_spec=manager.kernel_spec, parent=manager
    )
    return manager


class _Provisioner(LocalProvisioner):
    """Jupyter's own provisioner, whose kernel process starts with tltf imported
    (tests/processes.py): a new process running ipykernel, as Jupyter starts it,
    without the 5 s import in each notebook's first cell."""

    async def launch_kernel(self, cmd, **kwargs):
        self.process = processes.python(
            cmd, cwd=kwargs.get("cwd"), env=kwargs.get("env"), new_session=True
        )
        self.pid = self.pgid = self.process.pid
        self.cwd = kwargs.get("cwd")
        return self.connection_info


def _errors(notebook) -> list[str]:
    return [
        f"{output.get('ename')}: {output.get('evalue')}"
        for cell in notebook.cells
        for output in cell.get("outputs", [])
        if output.get("output_type") == "error"
    ]


def test_there_are_five_notebooks_in_reading_order():
    names = [path.name for path in NOTEBOOKS]
    assert names == [
        "01_quick_start.ipynb",
        "02_schedule_and_callbacks.ipynb",
        "03_tuning_unfreeze_depth.ipynb",
        "04_own_data_and_tflite.ipynb",
        "05_choosing_base_and_blocks.ipynb",
    ]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_committed_notebook_has_no_outputs(path):
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    for i, cell in enumerate(notebook.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name}: cell {i} has outputs"
            assert cell.execution_count is None, f"{path.name}: cell {i} was run"


def test_notebooks_match_their_generator():
    spec = importlib.util.spec_from_file_location("_build", NOTEBOOK_DIR / "_build.py")
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    assert sorted(build.NOTEBOOKS) == [p.name for p in NOTEBOOKS]
    for path in NOTEBOOKS:
        assert path.read_text() == build.render(path.name), (
            f"{path.name} differs from notebooks/_build.py: run "
            ".venv/bin/python notebooks/_build.py"
        )


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_offline_on_a_kernel(path, tmp_path):
    notebook = nbformat.read(path, as_version=4)
    workdir = tmp_path / "work"
    workdir.mkdir()
    client = NotebookClient(
        notebook,
        km=_kernel_manager(tmp_path),
        timeout=CELL_TIMEOUT,
        startup_timeout=120,
        resources={"metadata": {"path": str(workdir)}},
    )
    start = time.perf_counter()
    try:
        client.execute()  # raises CellExecutionError on the first failing cell
    finally:
        # A client given its kernel manager does not own the kernel, and leaves
        # it running: a Python process holding TensorFlow (about 1 GB) until
        # the suite ends, for each notebook.
        client.km.shutdown_kernel(now=True)
    seconds = time.perf_counter() - start
    assert not client.km.is_alive()
    assert _errors(notebook) == []
    assert seconds < NOTEBOOK_LIMIT, f"{path.name} took {seconds:.0f} s"
    # The run used the base shipped with tltf (nothing pretrained into the fresh
    # store) and its own temporary folder, not the user's.
    assert not (tmp_path / "tltf_home" / "bases").exists()
    assert list((tmp_path / "tmp").glob("tltf-notebook-*"))
    # Figures are shown inline, as a reader sees them.
    images = [
        output
        for cell in notebook.cells
        for output in cell.get("outputs", [])
        if "image/png" in output.get("data", {})
    ]
    assert images, f"{path.name} shows no figure"
    # Each figure shows once: a cell whose value is a figure tltf returned would
    # show it twice (inline display, then the value), so such cells end in ";".
    for i, cell in enumerate(notebook.cells):
        shown = [o for o in cell.get("outputs", []) if "image/png" in o.get("data", {})]
        assert len(shown) <= 1, f"{path.name}: cell {i} shows {len(shown)} figures"
    print(f"{path.name}: {seconds:.1f} s")


def _calls(path: Path, function: str) -> list[ast.Call]:
    """The calls of `function` (e.g. "tltf.fine_tune") in a notebook's code."""
    calls = []
    for cell in nbformat.read(path, as_version=4).cells:
        if cell.cell_type != "code":
            continue
        lines = cell.source.splitlines()
        source = "\n".join(line for line in lines if not line.startswith("%"))
        calls += [
            node
            for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.Call) and ast.unparse(node.func) == function
        ]
    return calls


def test_notebooks_fine_tune_with_the_default_rates_and_depth():
    """Notebooks 1 to 4 teach the defaults; notebook 5 is about changing them."""
    chosen = {"head_lr", "fine_tune_lr", "unfreeze", "fine_tune_epochs", "head_steps"}
    count = 0
    for path in NOTEBOOKS:
        if path.name == CHOOSING:
            continue
        for call in _calls(path, "tltf.fine_tune"):
            count += 1
            fixed = sorted({keyword.arg for keyword in call.keywords} & chosen)
            assert not fixed, (
                f"{path.name}: fine_tune sets {fixed}: {ast.unparse(call)}"
            )
    assert count >= 4


def test_notebook_3_reads_the_probe_and_shows_cut_and_find():
    path = NOTEBOOK_DIR / "03_tuning_unfreeze_depth.ipynb"
    assert _calls(path, "tltf.probe_blocks")
    assert _calls(path, "tltf.find_lr")
    builds = _calls(path, "tltf.build_model")
    assert any(keyword.arg == "cut" for call in builds for keyword in call.keywords)
    text = "\n".join(cell.source for cell in nbformat.read(path, as_version=4).cells)
    for words in ("How to read it", "base_helps", "tolerance", '"find"'):
        assert words in text, words


def _keywords(calls: list[ast.Call]) -> dict[str, list[str]]:
    """`{keyword: [its source in each call]}` over the calls."""
    found = {}
    for call in calls:
        for keyword in call.keywords:
            found.setdefault(keyword.arg, []).append(ast.unparse(keyword.value))
    return found


def test_notebook_5_ranks_bases_unfreezes_a_range_interpolates_and_soups():
    path = NOTEBOOK_DIR / CHOOSING
    # 1. Ranking: several candidates of different kinds, and the plot.
    ranks = _calls(path, "tltf.rank_bases")
    assert ranks
    assert _calls(path, "tltf.save_base")  # a saved (cut) base is a candidate
    assert any(
        keyword.arg == "weights" and ast.unparse(keyword.value) == "None"
        for call in _calls(path, "tltf.load_base")
        for keyword in call.keywords
    ), "no randomly initialised candidate"
    assert _calls(path, "ranking.plot")
    # 2. A block range, bottom blocks included, and which blocks trained.
    settings = _keywords(_calls(path, "tltf.fine_tune"))
    cells = nbformat.read(path, as_version=4).cells
    code = "\n".join(cell.source for cell in cells if cell.cell_type == "code")
    text = "\n".join(cell.source for cell in cells)
    assert '{"range": [0, 1]}' in code, "no bottom-block range is trained"
    assert "unfreeze" in settings
    assert _calls(path, "tltf.block_summary")
    for words in ("auto_rgn", "unfreeze_offset", "How to read it"):
        assert words in text, words
    # 3. Stage 1 alone, interpolation at several alphas, wise="auto", a soup.
    assert "0" in settings.get("fine_tune_epochs", []), "no stage-1 model"
    assert "'auto'" in settings.get("wise", []), "no fine_tune(..., wise='auto')"
    interpolations = _calls(path, "tltf.interpolate")
    assert any(
        ast.unparse(call.args[2]) == "alpha"
        for call in interpolations
        if len(call.args) > 2
    ), "no interpolation over several alphas"
    assert _calls(path, "tltf.soup")


def test_cli_commands_quoted_in_the_notebooks_parse():
    import argparse
    import re
    import shlex

    from tltf.cli import build_parser

    parser = build_parser()
    commands = [
        command
        for path in NOTEBOOKS
        for cell in nbformat.read(path, as_version=4).cells
        for command in re.findall(r"`tltf ([a-z]+ [^`]*)`", cell.source)
    ]
    assert commands, "the notebooks quote no tltf command"
    subcommands = next(
        action.choices
        for action in parser._actions
        if isinstance(action, argparse._SubParsersAction)
    )
    for command in commands:
        words = shlex.split(command)
        assert words[0] in subcommands, command
        if "--help" not in words:
            parser.parse_args(words)  # exits (fails) on a bad command
