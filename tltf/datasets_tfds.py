"""tltf's procedural datasets as a real TensorFlow Datasets builder.

Importing this module registers the builder `tltf_shapes`, so the standard tfds
loading path works offline: `tfds.load` prepares the dataset once (generating the
images instead of downloading them), writes TFRecords to the tfds data directory,
and reads them back like any other dataset. `tltf.load_data` imports it for a
`tfds:` source; `import tltf` alone does not import tfds (it is slow to import).

Configs: `tltf_shapes/source` (16 shape classes), `tltf_shapes/target` (12 other
shape classes), `tltf_shapes/textures` (8) and `tltf_shapes/counting` (6); images
are 64x64 RGB, with `train` and `test` splits.

Example:

>>> import tltf.datasets_tfds, tensorflow_datasets as tfds
>>> train, info = tfds.load("tltf_shapes/target", split="train[:80%]",
...                         as_supervised=True, with_info=True)
>>> info.features["label"].names[:3]
['arc', 'hollow_square', 'hollow_triangle']
"""

from __future__ import annotations

import dataclasses

import tensorflow_datasets as tfds

from tltf import datasets

IMAGE_SIZE = 64


@dataclasses.dataclass
class ShapesConfig(tfds.core.BuilderConfig):
    """One procedural task with its split sizes (images per class)."""

    task: str = datasets.TARGET_TASK
    train_per_class: int = 200
    test_per_class: int = 50


class TltfShapes(tfds.core.GeneratorBasedBuilder):
    """Procedural labelled images: shapes, textures and counting (offline)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    BUILDER_CONFIGS = [
        ShapesConfig(
            name="source", task=datasets.SOURCE_TASK, description="16 shape classes"
        ),
        ShapesConfig(
            name="target", task=datasets.TARGET_TASK, description="12 other shapes"
        ),
        ShapesConfig(name="textures", task="textures", description="8 texture classes"),
        ShapesConfig(
            name="counting", task="counting", description="count 1 to 6 objects"
        ),
    ]

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(IMAGE_SIZE, IMAGE_SIZE, 3)),
                    "label": tfds.features.ClassLabel(
                        names=datasets.class_names(self.builder_config.task)
                    ),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://github.com/tltf/tltf",
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Nothing to download: the images are generated.
        config = self.builder_config
        return {
            "train": self._generate_examples(config.train_per_class, seed=0),
            "test": self._generate_examples(config.test_per_class, seed=1),
        }

    def _generate_examples(self, per_class: int, seed: int):
        images, labels = datasets.make_images(
            self.builder_config.task,
            per_class=per_class,
            image_size=IMAGE_SIZE,
            seed=seed,
        )
        for i, (image, label) in enumerate(zip(images, labels, strict=True)):
            yield i, {"image": image, "label": int(label)}
