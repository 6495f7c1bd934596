"""tf.distribute strategies, the Keras multi-worker fixes, mixed precision, XLA.

The multi-worker test runs two real worker processes on 127.0.0.1 (CPU), each
with its own TF_CONFIG, and compares their final weights.
"""

from __future__ import annotations

import json
import os
import sys
import textwrap
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

import tltf
from tests import processes
from tests.helpers import ROOT, free_ports, make_data, make_tiny_base
from tltf import compute, distribute
from tltf.errors import ConfigError, TrainingError
from tltf.model import model_info

TIMEOUT_S = 120  # per subprocess run; a healthy run takes ~15 s on 2 cores

# One worker of the multi-worker test. It first shows that plain Keras `fit`
# fails without tltf's two fixes (each one separately), then runs a two-stage
# fine_tune, and saves its weights before and after.
WORKER = textwrap.dedent(
    """
    import json, sys
    import tltf
    from tltf.distribute import resolve_strategy

    strategy = resolve_strategy("multi_worker")  # first: needs a fresh runtime
    import keras
    import numpy as np
    import tensorflow as tf
    from keras.src.backend.tensorflow import trainer as T
    from tests.helpers import make_data, make_tiny_base

    out = sys.argv[1]
    report = {"replicas": strategy.num_replicas_in_sync}

    # Plain Keras without the fixes, then with only the first one.
    build, reduce = T.TensorFlowTrainer._maybe_symbolic_build, T.reduce_per_replica
    x = np.random.default_rng(0).normal(size=(16, 4)).astype("float32")
    y = (np.arange(16) % 3).astype("int32")
    for name, patched_build in (("none", False), ("build_only", True)):
        T.TensorFlowTrainer._maybe_symbolic_build = (
            build if patched_build else build._tltf_original
        )
        T.reduce_per_replica = reduce._tltf_original
        with strategy.scope():
            plain = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
            plain.compile("sgd", "sparse_categorical_crossentropy")
        try:
            plain.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(4), verbose=0)
            report[name] = "ok"
        except Exception as error:
            report[name] = f"{type(error).__name__}: {str(error)[:200]}"
    T.TensorFlowTrainer._maybe_symbolic_build, T.reduce_per_replica = build, reduce

    keras.utils.set_random_seed(0)
    model = tltf.build_model(make_tiny_base(), 3, strategy=strategy)
    before = [np.array(w.numpy()) for w in model.weights]
    # keep_best=False: stage 2 runs however well stage 1 did (the head's raw
    # pixels alone classify make_data's colours).
    history = tltf.fine_tune(
        model, make_data(n=32), head_epochs=1, fine_tune_epochs=1, unfreeze=1,
        head_lr=1e-2, fine_tune_lr=1e-2, batch_size=8, seed=0, verbose=0,
        keep_best=False,
    )
    report["stage"] = history.history["stage"]
    report["loss"] = history.history["loss"]
    report["names"] = [w.path for w in model.weights]
    report["trainable"] = tltf.trainable_blocks(model)
    after = [np.array(w.numpy()) for w in model.weights]
    np.savez(out + ".npz", *before, *after)
    with open(out + ".json", "w") as f:
        json.dump(report, f)
    """
)


def _env(**extra) -> dict:
    env = dict(os.environ)
    env.pop("TF_CONFIG", None)
    env.update(
        PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
        CUDA_VISIBLE_DEVICES="",
        TF_CPP_MIN_LOG_LEVEL="2",
        **extra,
    )
    return env


def _run_all(commands: list[tuple[list[str], dict]]) -> None:
    """Runs processes side by side (each started with tltf imported:
    tests/processes.py); kills them all on a failure or the timeout."""
    procs = [processes.python(cmd, cwd=ROOT, env=env) for cmd, env in commands]
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while any(p.poll() is None for p in procs):
            if time.monotonic() > deadline or any(p.poll() for p in procs):
                break
            time.sleep(0.2)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
    failed = [i for i, p in enumerate(procs) if p.returncode != 0]
    if failed:
        tails = []
        for i in failed:
            tails.append(f"--- process {i} (rc {procs[i].returncode}):\n")
            tails.append(procs[i].communicate()[0][-3000:])
        pytest.fail("subprocess failed or timed out:\n" + "".join(tails))


@pytest.mark.slow
def test_multi_worker_fine_tune_gives_identical_weights(tmp_path):
    ports = free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    commands = []
    for index in range(2):
        tf_config = json.dumps(
            {"cluster": cluster, "task": {"type": "worker", "index": index}}
        )
        out = str(tmp_path / f"worker{index}")
        commands.append(([sys.executable, str(script), out], _env(TF_CONFIG=tf_config)))
    _run_all(commands)

    reports = [json.loads((tmp_path / f"worker{i}.json").read_text()) for i in (0, 1)]
    arrays = [np.load(tmp_path / f"worker{i}.npz") for i in (0, 1)]
    for report in reports:
        assert report["replicas"] == 2
        # Keras 3 alone fails in both places that tltf patches (keras#20585).
        assert "PerReplica" in report["none"]
        assert "Invalid reduction dimension 0" in report["build_only"]
        assert report["stage"] == [1, 2]
        assert report["trainable"] == ["block4"]
        assert all(np.isfinite(report["loss"]))
    assert reports[0]["loss"] == reports[1]["loss"]
    names = reports[0]["names"]
    n = len(names)
    before = [arrays[0][f"arr_{i}"] for i in range(n)]
    after = [[a[f"arr_{i}"] for i in range(n, 2 * n)] for a in arrays]
    for name, a, b in zip(names, after[0], after[1], strict=True):
        np.testing.assert_array_equal(a, b, err_msg=f"workers differ in {name}")
    changed = {
        name
        for name, b, a in zip(names, before, after[0], strict=True)
        if not np.array_equal(a, b)
    }
    assert any(name.startswith("head_output") for name in changed)
    assert any("block4_conv" in name for name in changed)
    assert not any("block1" in name or "block2" in name for name in changed)


MIRRORED = textwrap.dedent(
    """
    import json, sys
    import tltf
    import numpy as np
    import tensorflow as tf
    from tests.helpers import make_data, make_tiny_base

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2
    )
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    tf.keras.utils.set_random_seed(0)
    model = tltf.build_model(make_tiny_base(), 3, strategy=strategy)
    before = [np.array(w.numpy()) for w in model.weights]
    history = tltf.fine_tune(
        model, make_data(n=32), head_epochs=1, fine_tune_epochs=1, unfreeze=1,
        head_lr=1e-2, fine_tune_lr=1e-2, batch_size=8, seed=0, verbose=0,
        strategy=strategy, keep_best=False,
    )
    replicas_equal = all(
        np.array_equal(v.value.values[0].numpy(), v.value.values[1].numpy())
        for v in model.weights
    )
    changed = [
        w.path for w, b in zip(model.weights, before)
        if not np.array_equal(w.numpy(), b)
    ]
    json.dump({"replicas": strategy.num_replicas_in_sync,
               "stage": history.history["stage"], "equal": replicas_equal,
               "changed": changed}, open(sys.argv[1], "w"))
    """
)


@pytest.mark.slow
def test_mirrored_two_logical_cpus(tmp_path):
    script = tmp_path / "mirrored.py"
    script.write_text(MIRRORED)
    out = tmp_path / "mirrored.json"
    _run_all([([sys.executable, str(script), str(out)], _env())])
    report = json.loads(out.read_text())
    assert report["replicas"] == 2
    assert report["stage"] == [1, 2]
    assert report["equal"]
    assert any("head_output" in name for name in report["changed"])
    assert any("block4_conv" in name for name in report["changed"])


# -- in-process: strategies ----------------------------------------------------
def test_resolve_strategy_auto_and_instances():
    default = distribute.resolve_strategy(None)
    assert default is tf.distribute.get_strategy()  # no GPU here
    assert distribute.resolve_strategy("auto") is default
    mirrored = distribute.resolve_strategy("mirrored")
    assert isinstance(mirrored, tf.distribute.MirroredStrategy)
    assert distribute.resolve_strategy("mirrored") is mirrored
    assert distribute.resolve_strategy(mirrored) is mirrored
    with pytest.raises(ConfigError, match="Expected strategy as one of"):
        distribute.resolve_strategy("mirored")


@pytest.mark.slow
@pytest.mark.parametrize(
    "value, match",
    [
        (None, "TF_CONFIG environment variable, which is not set"),
        ("{cluster", "not valid JSON"),
        ('{"task": {"type": "worker", "index": 0}}', "no cluster.worker list"),
        ('{"cluster": {"worker": ["a:1", "b:2"]}}', "task must name"),
        (
            '{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 1}}',
            "task must name",
        ),
    ],
)
def test_multi_worker_needs_valid_tf_config(monkeypatch, value, match):
    if value is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", value)
    with pytest.raises(ConfigError, match=match) as info:
        distribute.resolve_strategy("multi_worker")
    assert "TF_CONFIG" in str(info.value)


def test_is_chief(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert distribute.is_chief()
    cluster = {"worker": ["a:1", "b:2"]}
    for index, chief in ((0, True), (1, False)):
        config = {"cluster": cluster, "task": {"type": "worker", "index": index}}
        monkeypatch.setenv("TF_CONFIG", json.dumps(config))
        assert distribute.is_chief() is chief
    config = {"cluster": {**cluster, "chief": ["c:3"]}, "task": {"type": "worker"}}
    monkeypatch.setenv(
        "TF_CONFIG", json.dumps({**config, "task": {"type": "worker", "index": 0}})
    )
    assert not distribute.is_chief()
    monkeypatch.setenv(
        "TF_CONFIG", json.dumps({**config, "task": {"type": "chief", "index": 0}})
    )
    assert distribute.is_chief()


@pytest.mark.slow
def test_mirrored_in_process_and_strategy_mismatch():
    strategy = distribute.resolve_strategy("mirrored")  # one CPU replica
    base = make_tiny_base()
    model = tltf.build_model(base, 3, strategy="mirrored")
    assert model.distribute_strategy is strategy
    # The base built outside the scope was rebuilt inside it, same weights.
    info = model_info(model)
    assert info.base is not base and info.base.name == base.name
    assert distribute.in_scope(model, strategy)
    for a, b in zip(info.base.weights, base.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    history = tltf.fine_tune(
        model,
        make_data(n=16),
        head_epochs=1,
        fine_tune_epochs=1,
        unfreeze=1,
        batch_size=8,
        keep_best=False,  # stage 2 runs however well stage 1 did
        verbose=0,
        strategy="mirrored",
        optimizer=keras.optimizers.SGD(0.01),  # made outside the scope: recreated
    )
    assert history.history["stage"] == [1, 2]
    assert distribute.in_scope(model, strategy)  # optimizer state included
    assert all(
        strategy.extended.variable_created_in_scope(v.value)
        for v in model.optimizer.variables
    )
    with pytest.raises(ConfigError, match="pass the strategy to `build_model"):
        tltf.fine_tune(model, make_data(n=16), strategy=tf.distribute.get_strategy())
    plain = tltf.build_model(make_tiny_base(), 3)
    with pytest.raises(ConfigError, match="built under no strategy"):
        tltf.fine_tune(plain, make_data(n=16), strategy="mirrored")
    used = keras.optimizers.SGD(0.01)
    used.build(plain.trainable_variables)
    with pytest.raises(ConfigError, match="created and built outside"):
        tltf.fine_tune(model, make_data(n=16), optimizer=used, verbose=0)


class Subclassed(keras.Model):
    """A subclassed model whose config lacks an argument: it cannot be cloned."""

    def __init__(self, width, **kwargs):
        super().__init__(**kwargs)
        self.block1_conv = keras.layers.Conv2D(width, 3, name="block1_conv")

    def call(self, x):
        return self.block1_conv(x)


def test_a_base_that_cannot_be_rebuilt_says_so():
    inputs = keras.Input((16, 16, 3))
    base = keras.Model(inputs, Subclassed(4, name="block1")(inputs))  # wrapped
    with pytest.raises(ConfigError, match="cannot be rebuilt.*strategy.scope"):
        tltf.build_model(base, 3, mixed_precision=True)
    assert keras.config.dtype_policy().name == "float32"


@pytest.mark.slow
def test_feature_cache_is_off_under_a_strategy(capsys):
    model = tltf.build_model(make_tiny_base(), 3, strategy="mirrored")
    tltf.fine_tune(model, make_data(n=16), head_epochs=1, fine_tune_epochs=0, verbose=1)
    out = capsys.readouterr().out
    assert "cache_features='auto' is off because training runs under a " in out
    with pytest.raises(ConfigError, match="tf.distribute strategy"):
        tltf.fine_tune(
            model,
            make_data(n=16),
            head_epochs=1,
            fine_tune_epochs=0,
            cache_features=True,
            verbose=0,
        )


# -- in-process: the Keras compatibility fixes -----------------------------------
def test_keras_compat_version_guard():
    assert distribute.keras_compat_needed("3.0.0")
    assert distribute.keras_compat_needed("3.15.1")
    assert not distribute.keras_compat_needed("3.16.0")
    assert not distribute.keras_compat_needed("2.15.0")
    # The installed Keras must be one whose trainer was checked for the two bugs:
    # after an upgrade, re-check keras/src/backend/tensorflow/trainer.py and move
    # KERAS_COMPAT_VERSIONS.
    assert distribute.keras_compat_needed(keras.__version__)


@pytest.mark.slow
def test_keras_compat_is_narrow_and_idempotent(monkeypatch):
    from keras.src.backend.tensorflow import trainer as T

    monkeypatch.setattr(
        T.TensorFlowTrainer,
        "_maybe_symbolic_build",
        T.TensorFlowTrainer._maybe_symbolic_build,
    )
    monkeypatch.setattr(T, "reduce_per_replica", T.reduce_per_replica)
    # Not a multi-worker strategy: nothing is patched.
    assert not distribute.apply_keras_compat(tf.distribute.get_strategy())
    assert not distribute.apply_keras_compat(distribute.resolve_strategy("mirrored"))
    # An (uninitialised) MultiWorkerMirroredStrategy object: patched, once.
    fake = tf.distribute.MultiWorkerMirroredStrategy.__new__(
        tf.distribute.MultiWorkerMirroredStrategy
    )
    assert distribute.apply_keras_compat(fake)
    build, reduce = T.TensorFlowTrainer._maybe_symbolic_build, T.reduce_per_replica
    assert build._tltf_compat and reduce._tltf_compat
    assert distribute.apply_keras_compat(fake)
    assert T.TensorFlowTrainer._maybe_symbolic_build is build
    assert T.reduce_per_replica is reduce
    assert not getattr(build._tltf_original, "_tltf_compat", False)
    # Other strategies go through the original Keras code.
    model = tltf.build_model(make_tiny_base(), 3, strategy="mirrored")
    tltf.fine_tune(model, make_data(n=16), head_epochs=1, fine_tune_epochs=0, verbose=0)
    # Outside KERAS_COMPAT_VERSIONS nothing is applied.
    monkeypatch.setattr(distribute, "keras_compat_needed", lambda version=None: False)
    assert not distribute.apply_keras_compat(fake)


# -- in-process: mixed precision and XLA ----------------------------------------
@pytest.mark.slow
def test_mixed_precision_keeps_head_float32_and_global_policy(tmp_path):
    assert compute.resolve_policy(True) == "mixed_bfloat16"  # CPU-only machine
    model = tltf.build_model(make_tiny_base(), 3, mixed_precision=True)
    assert keras.config.dtype_policy().name == "float32"
    assert model.dtype_policy.name == "mixed_bfloat16"
    assert model.output.dtype == "float32"
    assert model.get_layer("head_output").dtype_policy.name == "float32"
    base = model_info(model).base
    assert base.get_layer("block1_conv").compute_dtype == "bfloat16"
    assert base.get_layer("block1_conv").kernel.dtype == "float32"
    history = tltf.fine_tune(
        model,
        make_data(n=16),
        head_epochs=1,
        fine_tune_epochs=1,
        unfreeze=1,
        batch_size=8,
        verbose=0,
    )
    assert np.all(np.isfinite(history.history["loss"]))
    assert model.predict(make_data(n=4)[0], verbose=0).dtype == np.float32
    # The policy survives a save and a safe load.
    model.save(tmp_path / "mixed.keras")
    loaded = tltf.load_model(tmp_path / "mixed.keras")
    assert model_info(loaded).base.get_layer("block1_conv").compute_dtype == "bfloat16"


@pytest.mark.slow
def test_mixed_float16_uses_loss_scaling():
    model = tltf.build_model(make_tiny_base(), 3, mixed_precision="mixed_float16")
    assert keras.config.dtype_policy().name == "float32"
    tltf.fine_tune(
        model,
        make_data(n=16),
        head_epochs=1,
        fine_tune_epochs=1,
        unfreeze=1,
        batch_size=8,
        verbose=0,
    )
    # Keras wrapped stage 1's optimizer; the stage-2 clone keeps loss scaling.
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    with pytest.raises(ConfigError, match="mixed_precision"):
        compute.resolve_policy("float16")


def test_policy_restored_after_an_error():
    with pytest.raises(ConfigError):
        tltf.build_model(make_tiny_base(), 3, mixed_precision=True, task="nope")
    assert keras.config.dtype_policy().name == "float32"


@pytest.mark.slow
def test_jit_compile_on_cpu():
    model = tltf.build_model(make_tiny_base(), 3)
    history = tltf.fine_tune(
        model,
        make_data(n=16),
        head_epochs=0,
        fine_tune_epochs=1,
        unfreeze=1,
        batch_size=8,
        verbose=0,
        jit_compile=True,
    )
    assert model.jit_compile is True
    assert np.all(np.isfinite(history.history["loss"]))
    with pytest.raises(ConfigError, match="jit_compile"):
        tltf.fine_tune(model, make_data(n=16), jit_compile="yes")


@keras.saving.register_keras_serializable(package="tltf_tests")
class NumpyLayer(keras.layers.Layer):
    """A layer with an op that XLA cannot compile (a Python function)."""

    def call(self, x):
        y = tf.numpy_function(lambda a: a, [x], tf.float32, stateful=False)
        return tf.ensure_shape(y, x.shape)


@pytest.mark.slow
def test_xla_failure_names_the_op_and_the_fix():
    inputs = keras.Input((16, 16, 3))
    x = NumpyLayer(name="block1_np")(inputs)
    x = keras.layers.Conv2D(4, 3, name="block1_conv")(x)
    base = keras.Model(inputs, x)
    model = tltf.build_model(
        base, 3, block_map={"block1": ["block1_np", "block1_conv"]}
    )
    with pytest.raises(TrainingError, match="PyFuncStateless has no XLA kernel") as e:
        tltf.fine_tune(
            model,
            make_data(n=16),
            head_epochs=1,
            fine_tune_epochs=0,
            verbose=0,
            jit_compile=True,
            cache_features=False,
        )
    assert "jit_compile=False" in str(e.value)
