"""Packaging metadata: installing tltf prints no setuptools deprecation box.

setuptools (from 77) deprecates `license = { text = ... }` and prints a
warning box for it on every build step of `pip install` (twice for `-e`). The SPDX
string form needs setuptools 77 or newer, which the build system then requires.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def _pyproject() -> dict:
    return tomllib.loads(PYPROJECT.read_text())


def test_license_is_an_spdx_expression_not_a_table():
    assert _pyproject()["project"]["license"] == "Apache-2.0"


def test_build_system_requires_a_setuptools_that_reads_spdx_licenses():
    requires = _pyproject()["build-system"]["requires"]
    bounds = [
        int(match.group(1))
        for requirement in requires
        if (match := re.fullmatch(r"setuptools\s*>=\s*(\d+)(\.\d+)*", requirement))
    ]
    assert bounds and bounds[0] >= 77, requires


def test_flat_layout_is_declared_so_editable_installs_print_no_notice():
    # Without package-dir, setuptools (80) makes `pip install -e .` a meta path
    # finder and prints an "Editable installation" notice box, even with --quiet;
    # with it, a plain .pth entry and no box (checked by hand: a throwaway venv).
    setuptools = _pyproject()["tool"]["setuptools"]
    assert setuptools["package-dir"] == {"": "."}
    assert setuptools["packages"]["find"]["include"] == ["tltf*"]
