"""Block rule of the RegNet family (ported in `tltf.bases.regnet`)."""

from __future__ import annotations

RULES: dict = {}
