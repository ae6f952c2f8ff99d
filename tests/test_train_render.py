"""cine_jax/train/render.py: the render Stage's data, config checks and export round trip (the training runs through
loop.run -- loss decrease, resume, 4 devices, the motion-net flow -- are in test_train_render_loop.py).

* batches: deterministic in (seed, step), a resumed iterator replays the same batches, every target is the
  generator's exact novel view k at time t (checked against procedural.make_clip, rendered independently of the
  files), and the static N comes from `frame_times`;
* export: stage.export writes feature_net / img_decoder with nets.checkpoints.save_converted; learned.resolve then
  selects the learned feature net and decoder for `cine-jax animate --weights` and the loaded params equal the
  exported ones.
"""

import os

import jax
import numpy as np
import pytest

from cine_jax.train import procedural
from cine_jax.train import render as render_stage
from configs import cine_train

SIZE, FRAMES, VIEWS = (32, 40), 3, 2


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("render_data")
    procedural.write_dataset(str(root), 2, size=SIZE, frames=FRAMES, views=VIEWS, seed=4, progress=False)
    return str(root)


def _config(**kw):
    cfg = cine_train.get_config("tiny")
    cfg.loop.batch_size = 2
    for k, v in kw.items():
        section, key = k.split("__")
        cfg[section][key] = v
    return cfg


def test_batches_are_deterministic_and_hold_the_exact_targets(data):
    cfg = _config()
    first = [b for _, b in zip(range(4), render_stage.batches(data, cfg, "train", 7, 0))]
    b3 = first[3]
    # consecutive steps draw other samples (t, view or clip)
    assert sum(any(not np.array_equal(first[j][k], b3[k]) for k in ("t", "pose", "target")) for j in range(3)) == 3
    resumed = next(iter(render_stage.batches(data, cfg, "train", 7, 3)))
    assert set(b3) == set(resumed)
    for k in b3:
        np.testing.assert_array_equal(b3[k], resumed[k])
    other = next(iter(render_stage.batches(data, cfg, "train", 8, 3)))
    assert any(not np.array_equal(other[k], b3[k]) for k in ("t", "target", "pose"))
    assert b3["frame_times"].shape == (2, FRAMES)
    # every target is view k of its clip at time t, as the generator renders it (not read back from the files)
    clips = [procedural.make_clip(procedural.clip_seed(4, i), SIZE, FRAMES, VIEWS) for i in range(2)]
    for i in range(2):
        t = int(b3["t"][i])
        found = False
        for c in clips:
            for k in range(VIEWS):
                if np.allclose(c["poses"][k], b3["pose"][i], atol=1e-6):
                    assert np.abs(c["timed_views"][k, t] - b3["target"][i]).max() <= 0.5 / 255 + 1e-6
                    found = True
        assert found


def test_config_errors(data, tmp_path):
    with pytest.raises(ValueError, match="motion.json: file not found"):
        render_stage.check_render_config(_config(render__flow="motion_net", render__motion_weights=str(tmp_path)))
    with pytest.raises(ValueError, match="render.flow"):
        render_stage.check_render_config(_config(render__flow="magic"))
    with pytest.raises(ValueError, match="no 'test' folder"):
        render_stage.load_clips(data, _config(), "test")


def test_export_round_trip_is_loaded_by_animate_weights(data, tmp_path):
    from cine_jax import learned
    from configs import cinemagraph

    cfg = _config()
    stage = render_stage.make_stage(cfg)
    batch = next(iter(render_stage.batches(data, cfg, "train", 0, 0)))
    shapes = jax.eval_shape(stage.init, jax.random.PRNGKey(0), batch)  # no compile of the big init
    rng = np.random.default_rng(0)
    state = jax.tree.map(lambda a: rng.normal(0, 0.05, a.shape).astype(a.dtype), shapes)
    out = tmp_path / "w"
    stage.export(state, str(out))
    assert sorted(os.listdir(out)) == ["feature_net.json", "feature_net.safetensors", "img_decoder.json",
                                       "img_decoder.safetensors"]
    icfg = cinemagraph.get_config()
    icfg.models.dir = str(out)
    sel = learned.resolve(icfg)
    assert sel.learned() == ["decoder", "features"]
    for name, key in (("feature_net", "feature_net"), ("img_decoder", "img_decoder")):
        _, variables = learned.load(str(out), name, icfg.models)
        got = jax.tree.leaves(variables["params"])
        want = jax.tree.leaves(state["g"][key])
        assert len(got) == len(want)
        for a, b in zip(got, want):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_layered_ldis_of_the_real_frames(data):
    cfg = _config(render__max_layers=2)
    clips = render_stage.load_clips(data, cfg, "train")
    s = clips[0]["sample"]
    h, w = SIZE
    assert s["ldi_rgba"].shape == (2, 2, h, w, 4) and s["fields"].shape == (4, h, w, 2)
    for side in range(2):
        # the layers' visible masks partition the image; the side's points sit in its own layers' fields
        np.testing.assert_array_equal(s["visible"][side].sum(0), np.ones((h, w)))
        pts = (s["side"] == side) & s["valid"]
        assert set(np.unique(s["layer"][pts])) <= {2 * side, 2 * side + 1}
    # the end frame's fields are -M: where both sides show the same visible layer, they are opposite
    np.testing.assert_allclose(s["fields"][:2].sum(0), -s["fields"][2:].sum(0), atol=1e-5)
