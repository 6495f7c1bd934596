"""Block rules of every registry family, keyed by family (module) name.

`RULES` maps a family to a naming rule `layer_name -> block name | None`;
`GRAPH_RULES` maps a family whose layer names carry no structure to a function
`model -> {layer_name: block name}`. See `tltf.bases.blockmaps`.
"""

from __future__ import annotations

from tltf.bases import _rules_multibranch, _rules_regnet, _rules_stagewise

RULES = {
    **_rules_stagewise.RULES,
    **_rules_multibranch.RULES,
    **_rules_regnet.RULES,
}
GRAPH_RULES = dict(getattr(_rules_multibranch, "GRAPH_RULES", {}))
