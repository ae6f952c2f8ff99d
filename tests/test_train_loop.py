"""cine_jax/train/loop.py: exact resume, sharded = 1 device, samples/metrics/weights, graceful stops.

The loop is tested with a small stage of its own (noisy linear regression with Adam: every step uses its key
and its batch, so a wrong key or batch on resume changes the parameters). Run as a script, this file is the
subprocess the signal test interrupts: `python tests/test_train_loop.py DATA OUT STEPS [--resume]`.
"""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs.cine_train import get_config

DIM = 6
W_TRUE = np.linspace(-1.0, 1.0, DIM).astype(np.float32)


SLOW = float(os.environ.get("TOY_STAGE_SLEEP", "0"))  # the signal subprocess slows its steps down


def _batches(data_dir, config, split, seed, start_step):
    bs = int(config.loop.batch_size)
    step = start_step
    while True:
        time.sleep(SLOW)
        rng = np.random.default_rng([seed, step])
        x = rng.normal(size=(bs, DIM)).astype(np.float32)
        yield {"x": x, "y": (x @ W_TRUE)[:, None].astype(np.float32)}
        step += 1


def toy_stage():
    from cine_jax.train.loop import Stage

    tx = optax.sgd(0.1, momentum=0.5)  # has optimiser state (the momentum trace)

    def init(key, batch):
        w = 0.1 * jax.random.normal(key, (DIM, 1))
        return {"w": w, "opt": tx.init(w)}

    def step(state, batch, key):
        def loss_fn(w):
            pred = batch["x"] @ w
            return jnp.mean((pred - batch["y"]) ** 2)

        loss, g = jax.value_and_grad(loss_fn)(state["w"])
        g = g + 1e-3 * jax.random.normal(key, g.shape)  # the step key matters
        upd, opt = tx.update(g, state["opt"], state["w"])
        return {"w": optax.apply_updates(state["w"], upd), "opt": opt}, {"loss": loss}

    def samples(state, batch):
        w = np.asarray(state["w"])[:, 0]
        img = np.zeros((4, DIM, 3), np.uint8)
        img[..., 0] = np.clip((w + 1) * 127, 0, 255).astype(np.uint8)[None]
        return {"w": img}

    def export(state, out_dir):
        np.save(os.path.join(out_dir, "w.npy"), np.asarray(state["w"]))

    return Stage("toy", init, step, samples, export, _batches)


def _cfg(steps=12, **loop):
    c = get_config("tiny")
    c.loop.steps = steps
    c.loop.batch_size = 8
    c.loop.log_every = 1
    c.loop.sample_every = 5
    c.loop.checkpoint_every = 4
    for k, v in loop.items():
        c.loop[k] = v
    return c


def _rows(out):
    return [json.loads(x) for x in open(os.path.join(out, "metrics.jsonl"))]


def test_run_writes_outputs_and_loss_decreases(tmp_path):
    from cine_jax.train import loop

    out = str(tmp_path / "run")
    res = loop.run(toy_stage(), str(tmp_path), out, _cfg(), mesh=loop.make_mesh(1), progress=False)
    rows = _rows(out)
    assert [r["step"] for r in rows] == list(range(1, 13))
    assert rows[-1]["loss"] < 0.5 * rows[0]["loss"]
    assert sorted(os.listdir(os.path.join(out, "samples"))) == ["step_0000005_w.png", "step_0000010_w.png"]
    np.testing.assert_array_equal(np.load(os.path.join(out, "weights", "w.npy")), np.asarray(res["state"]["w"]))
    assert json.load(open(os.path.join(out, "results.json")))["steps"] == 12
    assert sorted(os.listdir(os.path.join(out, "checkpoints"))) == ["12", "8"]  # keep = 2


def test_resume_is_bit_identical_and_overwrite_clears(tmp_path):
    from cine_jax.train import loop

    mesh = loop.make_mesh(1)
    full = loop.run(toy_stage(), str(tmp_path), str(tmp_path / "full"), _cfg(), mesh=mesh, progress=False)
    part = str(tmp_path / "part")
    loop.run(toy_stage(), str(tmp_path), part, _cfg(steps=6), mesh=mesh, progress=False)  # checkpoint at 6
    with pytest.raises(ValueError, match="already holds files"):
        loop.run(toy_stage(), str(tmp_path), part, _cfg(), mesh=mesh, progress=False)
    resumed = loop.run(toy_stage(), str(tmp_path), part, _cfg(), resume=True, mesh=mesh, progress=False)
    np.testing.assert_array_equal(np.asarray(full["state"]["w"]), np.asarray(resumed["state"]["w"]))
    assert [r["step"] for r in _rows(part)] == list(range(1, 13))
    assert [r["loss"] for r in _rows(part)] == [r["loss"] for r in _rows(str(tmp_path / "full"))]
    # --overwrite: a fresh start; the earlier run's checkpoints and metrics are gone
    loop.run(toy_stage(), str(tmp_path), part, _cfg(steps=3), overwrite=True, mesh=mesh, progress=False)
    assert [r["step"] for r in _rows(part)] == [1, 2, 3]
    assert sorted(os.listdir(os.path.join(part, "checkpoints"))) == ["3"]


def test_four_devices_equal_one_device(tmp_path, num_devices):
    from cine_jax.train import loop

    assert num_devices >= 4
    one = loop.run(toy_stage(), str(tmp_path), str(tmp_path / "one"), _cfg(), mesh=loop.make_mesh(1), progress=False)
    four = loop.run(toy_stage(), str(tmp_path), str(tmp_path / "four"), _cfg(), mesh=loop.make_mesh(4),
                    progress=False)
    # the mean over a sharded batch is a cross-device sum: equal up to float32 reassociation
    np.testing.assert_allclose(np.asarray(four["state"]["w"]), np.asarray(one["state"]["w"]), rtol=1e-5, atol=1e-6)
    la = [r["loss"] for r in _rows(str(tmp_path / "one"))]
    lb = [r["loss"] for r in _rows(str(tmp_path / "four"))]
    np.testing.assert_allclose(lb, la, rtol=1e-5)
    assert four["state"]["w"].sharding.is_fully_replicated


def test_bad_batches_are_clear_errors(tmp_path):
    from cine_jax.train import loop

    st = toy_stage()
    bad = loop.Stage(st.name, st.init, st.step, st.samples, st.export,
                     lambda *a: iter([{"x": np.zeros((3, DIM), np.float32)}]))
    with pytest.raises(ValueError, match=r"batch\['x'\] must be \[batch_size=8"):
        loop.run(bad, str(tmp_path), str(tmp_path / "o"), _cfg(), mesh=loop.make_mesh(1), progress=False)
    with pytest.raises(ValueError, match="multiple of the 4 devices"):
        loop.run(st, str(tmp_path), str(tmp_path / "o2"), _cfg(batch_size=6), mesh=loop.make_mesh(4),
                 progress=False)
    with pytest.raises(ValueError, match="loop.steps"):
        loop.run(st, str(tmp_path), str(tmp_path / "o3"), _cfg(steps=0), progress=False)
    with pytest.raises(ValueError, match="data folder not found"):
        loop.run(st, str(tmp_path / "nope"), str(tmp_path / "o4"), _cfg(), progress=False)


STEPS_SIGNAL = 150


def test_sigint_checkpoints_then_resume_is_bit_identical(tmp_path):
    out = str(tmp_path / "run")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "TOY_STAGE_SLEEP": "0.02", "PYTHONPATH": root}
    argv = [sys.executable, os.path.abspath(__file__), str(tmp_path), out, str(STEPS_SIGNAL)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    metrics = os.path.join(out, "metrics.jsonl")
    deadline = time.monotonic() + 120
    while not (os.path.exists(metrics) and len(open(metrics).readlines()) >= 3):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the run never started stepping"
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    stdout, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    stopped = int(stdout.split("stopped after step ")[1].split()[0])
    assert 3 <= stopped < STEPS_SIGNAL
    assert [r["step"] for r in _rows(out)] == list(range(1, stopped + 1))
    assert not os.path.exists(os.path.join(out, "weights"))  # a stopped run exports nothing
    code = subprocess.run(argv + ["--resume"], env=env, capture_output=True, text=True, timeout=120)
    assert code.returncode == 0, code.stderr
    assert [r["step"] for r in _rows(out)] == list(range(1, STEPS_SIGNAL + 1))
    from cine_jax.train import loop

    full = loop.run(toy_stage(), str(tmp_path), str(tmp_path / "full"), _script_cfg(STEPS_SIGNAL),
                    mesh=loop.make_mesh(1), progress=False)
    np.testing.assert_array_equal(np.load(os.path.join(out, "weights", "w.npy")), np.asarray(full["state"]["w"]))


def _script_cfg(steps):
    return _cfg(steps=steps, checkpoint_every=10_000, sample_every=0)


if __name__ == "__main__":
    from cine_jax.train import loop
    from clitools.signals import GracefulStop

    data, out, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
    with GracefulStop() as stop:
        res = loop.run(toy_stage(), data, out, _script_cfg(steps), resume="--resume" in sys.argv,
                       mesh=loop.make_mesh(1), progress=False, stop=stop)
    if "stopped" in res:
        print(f"stopped after step {res['stopped']}")
        sys.exit(stop.exit_code)
