"""Block rule of the RegNet family (ported in `tltf.bases.regnet`).

Layer names are `<model>_stem_*`, `<model>_prestem_*` and
`<model>_Stage_<s>_<X|Y>Block_<b>_*`; each X/Y block is one residual unit. With a
classifier (`include_top=True`) the head layers go to "top".
"""

from __future__ import annotations

import re

_BLOCK = re.compile(r"^regnet[xy]\d+_(Stage_\d+_[XY]Block_\d+)_")
_STEM = re.compile(r"^regnet[xy]\d+_(?:prestem|stem)_")
# The original names the classifier `<model>head_dense` (no underscore).
_TOP = re.compile(r"^regnet[xy]\d+(?:_head_gap|head_dense|_avg_pool|_max_pool)$")


def regnet_rule(name: str) -> str | None:
    """Maps a RegNet layer name to "stem", "Stage_<s>_<X|Y>Block_<b>" or "top"."""
    match = _BLOCK.match(name)
    if match:
        return match[1]
    if _STEM.match(name):
        return "stem"
    if _TOP.match(name):
        return "top"
    return None


RULES = {"regnet": regnet_rule}
