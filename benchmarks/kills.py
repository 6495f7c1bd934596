"""Kills survived: `fine_tune(backup_dir=)`, `tltf train --resume` and `tltf.tune`.

Each trial SIGKILLs a run at a random point, resumes it (again and again if a
resume is killed too, which does not happen here: one kill per trial), and
compares the finished run with an uninterrupted one, bit for bit:

- api: `tests/resume_job.py` (array inputs, the automatic defaults with
  `TLTF_JOB_AUTO=1`: a converged stage 1 on cached features, `unfreeze="auto"`,
  the guard). Kill points: the end of a training batch, just before a checkpoint
  replaces the last one (`os.replace`), and in the middle of writing one (numpy's
  `write_array`). Compared: every model variable and the history.
- cli: `tests/cli_job.py`, a `tltf train` of an image folder (a DataBundle, the
  stage-1 feature cache), resumed with `tltf train --resume`. Kill points: the
  start of an epoch or the end of a training batch. Compared: the weights in
  `best.keras` and `last.keras`, and `history.csv`.
- tune: `tests/tuning_job.py`, a 4-trial random search, SIGKILLed once a random
  trial has started fitting (plus up to 2 s), and rerun. A search survives when
  every trial completed, no completed trial was fitted again, and at most the
  trial the kill interrupted was redone.

The baseline is the uninterrupted run; the last line prints the fraction of
killed runs and searches that survived (runs: bit-equal to the baseline).

Usage (from the repository root):
    PYTHONPATH=. .venv/bin/python benchmarks/kills.py [--api 10] [--cli 10] [--tune 5]
        [--seed 0]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from tests.test_cli_resume import make_work, weights_bytes

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": "-1"}


def _run(args, cwd=ROOT, env=ENV) -> int:
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=900,
    ).returncode


def _until_done(args, kill, cwd=ROOT, env=ENV, resume_args=None) -> tuple[int, int]:
    """Runs once with `kill`, then resumes until it exits 0; (kills, resumes)."""
    kills = int(_run([*args(kill)], cwd, env) == -9)
    resumes = 0
    while True:
        code = _run([*(resume_args or args)("-")], cwd, env)
        resumes += 1
        if code == 0:
            return kills, resumes
        if code != -9 or resumes > 3:
            raise RuntimeError(f"resume exited {code}")


# -- api ---------------------------------------------------------------------------
def _history(arrays) -> dict:
    """The job's history (JSON bytes; the key order may differ after a resume)."""
    return json.loads(arrays["history"].tobytes())


def api_trials(n: int, rng: random.Random) -> list[tuple[str, bool]]:
    env = {**ENV, "TLTF_JOB_AUTO": "1"}
    work = Path(tempfile.mkdtemp(prefix="tltf-kills-api-"))

    def job(name):
        return lambda kill: [
            "tests.resume_job",
            str(work / name / "backup"),
            str(work / name / "log"),
            str(work / name / "out.npz"),
            *([] if kill == "-" else [kill]),
        ]

    (work / "ref").mkdir()
    assert _run(job("ref")("-"), env=env) == 0
    reference = dict(np.load(work / "ref" / "out.npz"))
    results = []
    for i in range(n):
        kind = rng.choice(["batch", "batch", "replace", "write"])
        # The job trains 12 stage-2 batches and writes about 10 checkpoints.
        at = {"batch": rng.randint(1, 12), "replace": rng.randint(1, 8)}.get(
            kind, rng.randint(1, 40)
        )
        kill = f"{kind}:{at}"
        name = f"t{i}"
        (work / name).mkdir()
        kills, _ = _until_done(job(name), kill, env=env)
        got = dict(np.load(work / name / "out.npz"))
        exact = (
            got.keys() == reference.keys()
            and all(
                np.array_equal(got[k], reference[k])
                for k in reference
                if k != "history"
            )
            and _history(got) == _history(reference)
        )
        results.append((kill + ("" if kills else " (finished first)"), exact))
        print(f"api {kill:12s} killed={bool(kills)} bit-exact={exact}", flush=True)
    return results


# -- cli ---------------------------------------------------------------------------
def cli_trials(n: int, rng: random.Random) -> list[tuple[str, bool]]:
    work = Path(tempfile.mkdtemp(prefix="tltf-kills-cli-"))
    make_work(work)
    env = {**ENV, "TLTF_HOME": str(work / "home")}

    def train(out):
        return lambda kill: [
            "tests.cli_job",
            kill,
            "train",
            "--config",
            "train.yaml",
            "--out",
            out,
        ]

    def resume(out):
        return lambda kill: ["tests.cli_job", kill, "train", "--resume", "--out", out]

    assert _run(train("runs/ref")("-"), work, env) == 0
    ref = work / "runs/ref"
    results = []
    for i in range(n):
        kill = rng.choice([f"epoch:{rng.randint(1, 4)}", f"batch:{rng.randint(1, 9)}"])
        out = f"runs/t{i}"
        kills, _ = _until_done(train(out), kill, work, env, resume(out))
        run = work / out
        exact = (
            all(
                weights_bytes(run / name) == weights_bytes(ref / name)
                for name in ("best.keras", "last.keras")
            )
            and (run / "history.csv").read_text() == (ref / "history.csv").read_text()
        )
        results.append((kill + ("" if kills else " (finished first)"), exact))
        print(f"cli {kill:12s} killed={bool(kills)} bit-exact={exact}", flush=True)
    return results


# -- tune --------------------------------------------------------------------------
def tune_trials(
    n: int, rng: random.Random, max_trials: int = 4
) -> list[tuple[str, bool]]:
    work = Path(tempfile.mkdtemp(prefix="tltf-kills-tune-"))
    env = {k: v for k, v in ENV.items() if not k.startswith("KERASTUNER_")}
    results = []
    for i in range(n):
        directory, logs = work / f"t{i}", work / f"logs{i}"
        logs.mkdir(parents=True)
        args = [
            sys.executable,
            "-m",
            "tests.tuning_job",
            str(directory),
            str(logs),
            str(max_trials),
        ]
        # Kill once the k-th trial has started fitting, after a random extra delay.
        k, extra = rng.randint(1, max_trials), rng.uniform(0.0, 2.0)
        proc = subprocess.Popen(
            args,
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        log = logs / "tuner0.log"
        while proc.poll() is None and (
            not log.exists() or len(log.read_text().split()) < k
        ):
            time.sleep(0.05)
        time.sleep(extra)
        kills = int(proc.poll() is None)
        if kills:
            proc.kill()
        proc.wait()
        code = 0 if not kills else _run(args[2:], env=env)
        with open(directory / "dist" / "tltf_results.csv") as f:
            rows = list(csv.DictReader(f))
        completed = [r["trial"] for r in rows if r["status"] == "COMPLETED"]
        fitted = (logs / "tuner0.log").read_text().split()
        ok = (
            code == 0
            and len(completed) == max_trials
            and set(fitted) == set(completed)
            and len(fitted) <= max_trials + kills
        )
        label = f"trial {k} +{extra:.1f}s" + ("" if kills else " (finished first)")
        results.append((label, ok))
        print(
            f"tune {label:24s} completed={len(completed)} fits={len(fitted)} "
            f"survived={ok}",
            flush=True,
        )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--api", type=int, default=10, help="killed API runs")
    parser.add_argument("--cli", type=int, default=10, help="killed CLI runs")
    parser.add_argument("--tune", type=int, default=5, help="killed searches")
    parser.add_argument("--seed", type=int, default=0, help="picks the kill points")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    results = api_trials(args.api, rng) + cli_trials(args.cli, rng)
    searches = tune_trials(args.tune, rng)
    api = results[: args.api]
    cli = results[args.api :]
    for name, part in (("api", api), ("cli", cli)):
        killed = [ok for kill, ok in part if "finished first" not in kill]
        print(
            f"{name}: {sum(killed)}/{len(killed)} killed runs resumed bit-exact "
            f"({len(part) - len(killed)} finished before their kill point)"
        )
    killed = [ok for kill, ok in searches if "finished first" not in kill]
    print(
        f"tune: {sum(killed)}/{len(killed)} killed searches resumed with every trial "
        "completed once"
    )
    killed = [ok for kill, ok in results + searches if "finished first" not in kill]
    print(
        f"survived SIGKILL + resume (runs bit-exact, searches complete): "
        f"{sum(killed)}/{len(killed)} = {sum(killed) / max(len(killed), 1):.2f}"
    )


if __name__ == "__main__":
    main()
