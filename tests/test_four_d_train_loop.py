"""four_d/train_loop.py: the loop shared by `four-d fit` and the Animate124 stages."""

import json
import os

import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from four_d import train_loop


class _Stop:
    requested = False

    def request(self):
        self.requested = True


def _counter_step(state):
    new = {"x": state["x"] + 1.0, "step": state["step"] + 1}
    return new, {"loss": new["x"] * 2.0}


def _config():
    c = ml_collections.ConfigDict()
    c.seed = 3
    return c


def test_run_loop_logs_checkpoints_and_stops(tmp_path):
    cfg = _config()
    mngr = train_loop.checkpoint_manager(str(tmp_path / "ck"), max_to_keep=10)
    saved, hooked = [], []

    def save(st):
        saved.append(int(st["step"]))
        train_loop.save_checkpoint(mngr, st, cfg)

    stop = _Stop()

    def hook(done, st, write_row):
        hooked.append(done)
        if done == 5:
            write_row({"step": done, "extra": 1.0})
            stop.request()

    state = {"x": jnp.zeros(()), "step": jnp.asarray(2, jnp.int32)}
    log = str(tmp_path / "m.jsonl")
    state, stopped = train_loop.run_loop(_counter_step, state, first=2, last=9, log_path=log, log_every=2,
                                         checkpoint_every=4, save=save, stop=stop, progress=False,
                                         extra_row={"stage": "s"}, hook=hook)
    # steps 3, 4, 5 ran; logged at 4; the hook's row at 5; saved at 4 (periodic) and 5 (the stop)
    assert (stopped, int(state["step"]), float(state["x"])) == (5, 5, 3.0), (stopped, state, hooked, saved)
    assert hooked == [3, 4, 5] and saved == [4, 5]
    rows = [json.loads(line) for line in open(log)]
    assert [r["step"] for r in rows] == [4, 5]
    assert rows[0]["loss"] == 4.0 and rows[0]["stage"] == "s" and rows[1] == {"step": 5, "extra": 1.0}
    ab = {"x": jnp.zeros(()), "step": jnp.zeros((), jnp.int32)}
    restored, conf = train_loop.restore_checkpoint(mngr, ab)
    assert int(restored["step"]) == 5 and float(restored["x"]) == 3.0 and conf["seed"] == 3
    mngr.close()
    # continuing runs the remaining steps and saves the last one
    saved.clear()
    mngr = train_loop.checkpoint_manager(str(tmp_path / "ck"), max_to_keep=10)
    state, stopped = train_loop.run_loop(_counter_step, restored, first=5, last=9, log_path=log, log_every=2,
                                         checkpoint_every=4, save=save, progress=False)
    mngr.close()
    assert stopped is None and int(state["step"]) == 9 and saved == [8, 9]


def test_step_key_is_a_function_of_seed_and_step():
    a, b = train_loop.step_key(1, 7), train_loop.step_key(1, 7)
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(train_loop.step_key(1, 8)))
    assert not np.array_equal(np.asarray(a), np.asarray(train_loop.step_key(2, 7)))


def test_optimizer_value_clip_and_learning_rates():
    o = ml_collections.ConfigDict(dict(lr_grid=1e-2, lr_mlp=1e-3, b1=0.9, b2=0.99, eps=1e-15, grad_clip=0.0))
    params = {"grid": {"tables": jnp.zeros(2)}, "mlp_0": {"kernel": jnp.zeros(2)}}
    seq = [{"grid": {"tables": jnp.array([5.0, -0.5])}, "mlp_0": {"kernel": jnp.array([3.0, 0.2])}},
           {"grid": {"tables": jnp.array([0.5, 0.5])}, "mlp_0": {"kernel": jnp.array([0.2, -4.0])}}]

    def run(tx, grads):
        st, p, ups = tx.init(params), params, []
        for g in grads:
            u, st = tx.update(g, st, p)
            p = optax.apply_updates(p, u)
            ups.append(u)
        return ups

    clipped = run(train_loop.make_optimizer(o, grad_clip=1.0), seq)
    by_hand = run(train_loop.make_optimizer(o), [jax_clip(g) for g in seq])
    plain = run(train_loop.make_optimizer(o), seq)
    for a, b in zip(clipped, by_hand, strict=True):
        np.testing.assert_allclose(a["grid"]["tables"], b["grid"]["tables"], rtol=1e-6)
        np.testing.assert_allclose(a["mlp_0"]["kernel"], b["mlp_0"]["kernel"], rtol=1e-6)
    assert not np.allclose(clipped[1]["grid"]["tables"], plain[1]["grid"]["tables"])
    # first Adam step is lr * sign(g): the grid tables use lr_grid, the rest lr_mlp
    np.testing.assert_allclose(plain[0]["grid"]["tables"], [-1e-2, 1e-2], rtol=1e-4)
    np.testing.assert_allclose(plain[0]["mlp_0"]["kernel"], [-1e-3, -1e-3], rtol=1e-4)


def jax_clip(tree):
    return {k: {kk: jnp.clip(v, -1.0, 1.0) for kk, v in d.items()} for k, d in tree.items()}


def test_clear_previous_run(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "x").write_text("1")
    (tmp_path / "metrics.jsonl").write_text("{}")
    (tmp_path / "keep.txt").write_text("k")
    train_loop.clear_previous_run(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["keep.txt"]


def test_make_mesh_rejects_bad_counts():
    import pytest

    with pytest.raises(ValueError, match="num_devices"):
        train_loop.make_mesh(0)
