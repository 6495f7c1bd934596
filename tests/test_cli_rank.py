"""`tltf rank`: ranks bases on an image folder, writes the table and the plot."""

from __future__ import annotations

import csv

import keras

import tltf
from tests.helpers import make_image_folder, make_tiny_base
from tests.test_ranking import constant_base, signal_base
from tltf.cli import main


def test_rank_end_to_end_on_an_image_folder(tmp_path, capsys):
    images = tmp_path / "images"
    make_image_folder(images, per_class=6)
    signal = tltf.save_base(tltf.load_base(signal_base()), tmp_path / "signal")
    noise = tmp_path / "noise.keras"
    constant_base().save(noise)
    tiny = tltf.save_base(tltf.load_base(make_tiny_base()), tmp_path / "tiny")
    out, plot = tmp_path / "rank.csv", tmp_path / "rank.png"
    status = main(
        [
            "rank",
            "--data",
            str(images),
            "--bases",
            str(noise),
            str(signal),
            str(tiny),
            "--image-size",
            "16",
            "--knn",
            "3",
            "--out",
            str(out),
            "--plot",
            str(plot),
        ]
    )
    printed = capsys.readouterr().out
    assert status == 0
    assert f"best by logme: {signal}" in printed
    assert f"tltf: wrote {out} and {plot}" in printed
    with open(out) as f:
        rows = list(csv.DictReader(f))
    assert rows[0]["candidate"] == str(signal) and rows[0]["logme_rank"] == "1"
    assert {r["candidate"] for r in rows} == {str(signal), str(noise), str(tiny)}
    noise_row = next(r for r in rows if r["candidate"] == str(noise))
    assert float(noise_row["knn"]) < float(rows[0]["knn"]) == 1.0
    assert plot.stat().st_size > 0


def test_rank_names_an_unknown_base_and_exits_2(tmp_path, capsys):
    images = tmp_path / "images"
    make_image_folder(images, per_class=2)
    status = main(
        ["rank", "--data", str(images), "--bases", "vgg61", "--image-size", "16"]
    )
    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith("tltf: error:") and "'vgg16'" in err
    keras.backend.clear_session()


def test_rank_builds_at_the_candidates_own_size(tmp_path, capsys):
    from tltf.cli import _rank_image_size

    small = tltf.save_base(tltf.load_base(make_tiny_base()), tmp_path / "small")
    big = tltf.load_base(make_tiny_base(input_shape=(32, 32, 3)))
    big = tltf.save_base(big, tmp_path / "big")
    assert _rank_image_size([str(small)]) == 16
    assert _rank_image_size(["demo"]) == 64  # not 224: it was pretrained at 64
    assert _rank_image_size(["inception_v3"]) == 299
    assert _rank_image_size(["vgg16", "resnet50"]) == 224
    assert capsys.readouterr().out == ""
    assert _rank_image_size(["demo", "vgg16"]) == 224
    assert _rank_image_size([str(small), str(big)]) == 224
    notes = capsys.readouterr().out.splitlines()
    assert notes == [
        "tltf: note: demo was saved at 64 px and is ranked at 224 px with the "
        "others; --image-size 64 ranks it at its own size.",
        f"tltf: note: {small} was saved at 16 px and is ranked at 224 px with the "
        "others; --image-size 16 ranks it at its own size.",
        f"tltf: note: {big} was saved at 32 px and is ranked at 224 px with the "
        "others; --image-size 32 ranks it at its own size.",
    ]
    images = tmp_path / "images"
    make_image_folder(images, per_class=4)
    assert main(["rank", "--data", str(images), "--bases", str(small)]) == 0
    assert f"best by logme: {small}" in capsys.readouterr().out
