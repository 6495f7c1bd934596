"""`tltf rank`: ranks bases on an image folder, writes the table and the plot."""

from __future__ import annotations

import csv

import keras
import numpy as np

import tltf
from tests.helpers import cli_error, make_image_folder, make_tiny_base, make_tiny_model
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
            str(images),  # the data first, as `tltf train photos/`
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


def test_rank_scores_a_sample_of_a_large_folder_unless_told_all(tmp_path, capsys):
    images = tmp_path / "images"
    make_image_folder(images, per_class=30, formats=("png",))
    signal = tltf.save_base(tltf.load_base(signal_base()), tmp_path / "signal")
    argv = ["rank", "--data", str(images), "--bases", str(signal)]
    argv += ["--image-size", "16", "--quiet"]
    assert main([*argv, "--max-images", "60"]) == 0
    assert "a seeded sample of 60 of 90 examples" in capsys.readouterr().out
    assert main([*argv, "--max-images", "all"]) == 0
    printed = capsys.readouterr().out
    assert "(90 examples, 3 classes" in printed and "seeded sample" not in printed


def test_rank_writes_the_others_when_a_candidate_cannot_run_and_exits_1(
    tmp_path, capsys
):
    images = tmp_path / "images"
    make_image_folder(images, per_class=4)
    signal = tltf.save_base(tltf.load_base(signal_base()), tmp_path / "signal")
    out = tmp_path / "rank.csv"
    argv = ["rank", "--data", str(images), "--bases", str(signal), "inception_v3"]
    status = main([*argv, "--image-size", "16", "--out", str(out)])
    captured = capsys.readouterr()
    assert status == 1
    with open(out) as f:
        assert [r["candidate"] for r in csv.DictReader(f)] == [str(signal)]
    assert "tltf: error: not ranked: rank_bases: candidate 'inception_v3'" in (
        captured.err
    )
    assert "75x75" in captured.err
    keras.backend.clear_session()


def test_rank_names_an_unknown_base_and_exits_2(tmp_path, capsys):
    images = tmp_path / "images"
    make_image_folder(images, per_class=2)
    status = main(
        ["rank", "--data", str(images), "--bases", "vgg61", "--image-size", "16"]
    )
    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith("tltf: error:") and "'vgg16'" in err
    # A comma-separated list names the unknown base alone (it read 'demo,vgg61').
    status = main(
        ["rank", "--data", str(images), "--bases", "demo,vgg61", "--image-size", "16"]
    )
    err = capsys.readouterr().err
    assert status == 2 and "Unknown base 'vgg61'" in err
    keras.backend.clear_session()


def test_rank_takes_its_data_once_first_or_as_data(tmp_path, capsys):
    images = str(tmp_path / "images")
    err = cli_error(["rank", "--bases", "demo"], capsys)
    assert "labelled data is missing" in err and "tltf rank photos/" in err
    err = cli_error(["rank", images, "--data", images, "--bases", "demo"], capsys)
    assert "given twice" in err and "--data" in err


def test_rank_takes_bases_separated_by_commas_and_keeps_a_path_whole(tmp_path):
    from tltf.cli import _split_bases

    odd = tmp_path / "a,b"
    odd.mkdir()
    assert _split_bases(["demo,mobilenet_v2", str(odd), "x,"]) == [
        "demo",
        "mobilenet_v2",
        str(odd),
        "x",
    ]


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


def relu_base(size=16):
    """A model file's base whose features vanish on inputs in [0, 1]: ReLU(x - 1)
    of each channel. On raw pixels it carries the bright channel: the label."""
    inputs = keras.Input((size, size, 3), name="relu_input")
    x = keras.layers.Conv2D(3, 1, name="block1_conv")(inputs)
    x = keras.layers.Conv2D(3, 1, activation="relu", name="block2_conv")(x)
    model = keras.Model(inputs, x, name="relu")
    model.get_layer("block1_conv").set_weights(
        [np.eye(3, dtype="float32")[None, None], np.zeros(3, "float32")]
    )
    model.get_layer("block2_conv").set_weights(
        [np.eye(3, dtype="float32")[None, None], -np.ones(3, "float32")]
    )
    return model


def test_rank_preprocessing_reaches_the_model_files_it_names(tmp_path, capsys):
    images = tmp_path / "images"
    make_image_folder(images, per_class=6)
    raw, unit = tmp_path / "raw.keras", tmp_path / "unit.keras"
    relu_base().save(raw)
    relu_base().save(unit)
    out = tmp_path / "rank.csv"
    args = ["rank", "--data", str(images), "--bases", str(raw), str(unit)]
    args += ["--image-size", "16", "--knn", "3", "--out", str(out), "--quiet"]
    assert main([*args, "--preprocessing", f"{unit}=unit"]) == 0
    with open(out) as f:
        knn = {r["candidate"]: float(r["knn"]) for r in csv.DictReader(f)}
    # Raw pixels keep the bright channel; in [0, 1] every feature is ReLU(<= 0).
    assert knn[str(raw)] == 1.0 and knn[str(unit)] < 0.7
    # A bare mode applies to every model file.
    assert main([*args, "--preprocessing", "unit"]) == 0
    with open(out) as f:
        assert all(float(r["knn"]) < 0.7 for r in csv.DictReader(f))
    capsys.readouterr()


def test_rank_preprocessing_refuses_what_it_would_ignore(tmp_path, capsys):
    images = tmp_path / "images"
    make_image_folder(images, per_class=2)
    saved = tltf.save_base(tltf.load_base(make_tiny_base()), tmp_path / "tiny")
    file = tmp_path / "relu.keras"
    relu_base().save(file)
    args = ["rank", "--data", str(images), "--image-size", "16", "--bases"]
    cases = {
        ("tf",): "none of --bases is one",
        ("tff",): "Did you mean 'tf'",
        (f"{saved}=tf",): f"tltf.load_base({str(saved)!r}, preprocessing='tf')",
        ("other.keras=tf",): "other.keras is not one of --bases",
    }
    for given, message in cases.items():
        status = main([*args, str(saved), "--preprocessing", *given])
        err = capsys.readouterr().err
        assert status == 2, given
        assert err.startswith("tltf: error: --preprocessing") and message in err
    # A model tltf built keeps the preprocessing its base was built with.
    built = tmp_path / "built.keras"
    make_tiny_model().save(built)
    status = main([*args, str(built), "--preprocessing", "tf"])
    err = capsys.readouterr().err
    assert status == 2 and f"--preprocessing tf for {built}: " in err
    assert "was built by tltf" in err
    # With a model file among the candidates, the bare mode is fine.
    status = main([*args, str(saved), str(file), "--preprocessing", "tf", "--quiet"])
    assert status == 0, capsys.readouterr().err
