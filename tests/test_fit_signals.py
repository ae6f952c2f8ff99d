"""four-d fit: SIGINT / SIGTERM finish the current step, write its checkpoint and exit 130 / 143; --resume then
continues bit-identically (issue 13). A fresh start (no --resume) never continues an earlier run's checkpoints."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from configs.four_d import get_config
from four_d import cli, scenes
from four_d import fit as fit_lib

ITERS = 150


def _cfg(**fit):
    c = get_config("tiny")
    c.fit.iterations = ITERS
    c.fit.log_every = 1
    c.fit.checkpoint_every = 1000  # the only checkpoint before the end is the one the signal asks for
    c.fit.eval_every = 0
    for k, v in fit.items():
        c.fit[k] = v
    return c


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    d = tmp_path_factory.mktemp("scene")
    scenes.write_dataset(scenes.make_scene("orbiting-spheres", 0), str(d), num_views=3, times=(0.0, 1.0), size=8,
                         num_test_views=0)
    return str(d)


def _steps(out):
    return [json.loads(x)["step"] for x in open(os.path.join(out, "metrics.jsonl"))]


def test_signal_checkpoints_then_resume_is_bit_identical(dataset, tmp_path):
    # SIGINT here; SIGTERM takes the same path (clitools.signals, tests/test_clitools.py checks its exit code)
    sig, code = signal.SIGINT, 130
    out = str(tmp_path / "run")
    argv = [sys.executable, "-m", "four_d.cli", "fit", dataset, "--out", out, "--config", "tiny", "--devices", "1",
            "--no-video", "--no-progress", f"--config.fit.iterations={ITERS}", "--config.fit.log_every=1",
            "--config.fit.checkpoint_every=1000", "--config.fit.eval_every=0"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = os.path.join(out, "metrics.jsonl")
    deadline = time.monotonic() + 240
    while not (os.path.exists(metrics) and len(open(metrics).readlines()) >= 3):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the fit never started stepping"
        time.sleep(0.02)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    stopped = int(err.split("after step ")[1].split()[0])
    assert 3 <= stopped < ITERS, err  # stopped mid-run, not at the end
    assert f"stopped by {signal.Signals(sig).name}" in err and "--resume" in err
    assert not os.path.exists(os.path.join(out, "results.json"))  # a stopped run claims no results
    assert _steps(out) == list(range(1, stopped + 1))  # every finished step logged, the checkpoint at the last

    cfg = _cfg()
    mesh = fit_lib.make_mesh(1)
    resumed = fit_lib.fit(dataset, out, cfg, resume=True, mesh=mesh, progress=False, video=False)
    assert _steps(out) == list(range(1, ITERS + 1))
    full = fit_lib.fit(dataset, str(tmp_path / "full"), cfg, mesh=mesh, progress=False, video=False)
    for x, y in zip(jax.tree.leaves(full["params"]), jax.tree.leaves(resumed["params"]), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_fresh_start_removes_the_earlier_runs_checkpoints(dataset, tmp_path):
    """--overwrite (no --resume) starts afresh: a later --resume must not pick up the earlier run's step."""
    out = str(tmp_path / "run")
    mesh = fit_lib.make_mesh(1)
    fit_lib.fit(dataset, out, _cfg(iterations=6, checkpoint_every=3), mesh=mesh, progress=False, video=False)
    assert cli.main(["fit", dataset, "--out", out, "--config", "tiny", "--devices", "1", "--no-video",
                     "--no-progress", "--config.fit.iterations=2", "--overwrite"]) == 0
    assert sorted(os.listdir(os.path.join(out, "checkpoints"))) == ["2"]
    assert _steps(out) == [2]
    assert json.load(open(os.path.join(out, "results.json")))["iterations"] == 2


def test_stop_flag_in_process(dataset, tmp_path):
    """The loop honours a stop request set between steps (the object the CLI's signal handler sets)."""

    class StopAfter:
        def __init__(self, n):
            self.calls, self.n = 0, n

        @property
        def requested(self):
            self.calls += 1
            return self.calls >= self.n

    out = str(tmp_path / "run")
    res = fit_lib.fit(dataset, out, _cfg(iterations=10), mesh=fit_lib.make_mesh(1), progress=False, video=False,
                      stop=StopAfter(4))
    assert res["stopped"] == 4 and _steps(out) == [1, 2, 3, 4]
    assert sorted(os.listdir(os.path.join(out, "checkpoints"))) == ["4"]
