"""Block rules for MobileNet, EfficientNet, ConvNeXt and VGG base models.

These are single-path networks whose layer names carry their stage and block.

A block rule maps the name of a layer of a `keras.applications` model to
the name of the architectural block the layer belongs to (`"stem"`,
`"block_1"`, ..., `"top"`), or to `None` for weightless layers that
belong to no block (the `InputLayer`, and auto-named layers such as the
activations of MobileNetV3, whose names carry no block information).

Rules are purely name-based, so they hold for every input size. Layers of
the classification head (`include_top=True`) and of the optional pooling
layer are mapped to `"top"` when they have a fixed name.
"""

from __future__ import annotations

import re

from tltf.bases.blockmaps import Rule

__all__ = ["RULES"]

# Auto-named preprocessing layers, e.g. `rescaling`, `normalization_3`.
_PREPROCESSING = r"^(?:rescaling|normalization)(?:_\d+)?$"


def _make_rule(*entries: tuple[str, str]) -> Rule:
    """Builds a rule from `(pattern, template)` pairs tried in order.

    Args:
        *entries: Regex patterns (searched in the layer name, so anchor them
            as needed) paired with the block name to return on a match. The
            block name is a `re.Match.expand` template, so it may refer to
            the pattern's groups (e.g. `r"block_\\1"`).

    Returns:
        The rule: the expanded template of the first matching pattern, or
        `None` if no pattern matches.
    """
    compiled = tuple((re.compile(pattern), template) for pattern, template in entries)

    def rule(layer_name: str) -> str | None:
        for pattern, template in compiled:
            match = pattern.search(layer_name)
            if match:
                return match.expand(template)
        return None

    return rule


# MobileNet (v1): `stem`, `block_1` ... `block_13`.
_mobilenet = _make_rule(
    (r"^conv1(?:_bn|_relu)?$", "stem"),
    (r"^conv_(?:dw|pw|pad)_(\d+)(?:_bn|_relu)?$", r"block_\1"),
    (r"^(?:dropout|conv_preds|reshape_2|predictions)$", "top"),
)

# MobileNetV2: `stem` (incl. the first, unexpanded bottleneck), `block_1`
# ... `block_16`, `top`.
_mobilenet_v2 = _make_rule(
    (r"^(?:Conv1|bn_Conv1|Conv1_relu)$|^expanded_conv_", "stem"),
    (r"^block_(\d+)_", r"block_\1"),
    (r"^(?:Conv_1|Conv_1_bn|out_relu|predictions)$", "top"),
)

# MobileNetV3 (Small and Large): `stem`, `expanded_conv`,
# `expanded_conv_1` ..., `top`.
_mobilenet_v3 = _make_rule(
    (_PREPROCESSING, "stem"),
    (r"^conv(?:_bn)?$", "stem"),
    (r"^(expanded_conv(?:_\d+)?)_", r"\1"),
    (r"^(?:conv_1|conv_1_bn|conv_2|logits|avg_pool|max_pool|predictions)$", "top"),
)

# EfficientNet and EfficientNetV2: `stem`, `block1a`, `block1b`, ...,
# `top`.
_efficientnet = _make_rule(
    (_PREPROCESSING, "stem"),
    (r"^stem_", "stem"),
    (r"^(block\d+[a-z])_", r"\1"),
    (r"^top_|^(?:avg_pool|max_pool|predictions)$", "top"),
)

# VGG16 and VGG19: `block1` ... `block5` (plus `top` for the classifier
# of `include_top=True`).
_vgg = _make_rule(
    (r"^(block\d)_", r"\1"),
    (r"^(?:flatten|fc1|fc2|predictions)$", "top"),
)

# ConvNeXt layer names carry the model name as prefix (`convnext_tiny_...`).
_CONVNEXT_DOWNSAMPLING = re.compile(r"_downsampling_block_(\d+)$")
_convnext_named = _make_rule(
    (r"_(?:prestem_normalization|stem)$", "stem"),
    (r"_stage_(\d+)_block_(\d+)_", r"stage\1_block\2"),
    # Final auto-named norm of `include_top=False`, or the classifier head.
    (r"^layer_normalization(?:_\d+)?$|_head_(?:gap|layernorm|dense)$", "top"),
)


def _convnext(layer_name: str) -> str | None:
    """ConvNeXt: `stem`, `stage0_block0` ..., `top`.

    The downsampling layer in front of stage `i` (named
    `downsampling_block_{i-1}`) belongs to that stage's first block.

    Args:
        layer_name: Name of a layer of a ConvNeXt model.

    Returns:
        The block name, or `None` if the layer belongs to no block.
    """
    match = _CONVNEXT_DOWNSAMPLING.search(layer_name)
    if match:
        return f"stage{int(match[1]) + 1}_block0"
    return _convnext_named(layer_name)


RULES: dict[str, Rule] = {
    "mobilenet": _mobilenet,
    "mobilenet_v2": _mobilenet_v2,
    "mobilenet_v3": _mobilenet_v3,
    "efficientnet": _efficientnet,
    "efficientnet_v2": _efficientnet,
    "convnext": _convnext,
    "vgg16": _vgg,
    "vgg19": _vgg,
}
"""Block rule per `keras.applications` module name."""
