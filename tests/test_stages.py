"""four_d/stages.py: schedules, reference losses, hand-over, a step's active terms, resume across a stage
boundary (bit-identical), and the sharded step (4 fake devices) = the 1-device step."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from configs.four_d import get_config
from four_d import oracle, scenes, stages, train_loop
from four_d.cameras import pose_from_spherical, reference_camera

# ---- pure schedule functions (paper values) -----------------------------------------------------------


def test_paper_schedule():
    c = get_config("paper")
    assert stages.stage_bounds(c) == {"static": (0, 5000), "coarse": (5000, 15000), "fine": (15000, 20000)}
    ref = [bool(stages.is_reference_step(c, s)) for s in (0, 57, 99, 100, 101, 102, 103, 104, 5001, 5004)]
    assert ref == [True, True, True, True, False, False, False, True, False, True]
    mask = lambda s: np.asarray(stages.stage_level_mask(c, s))
    assert mask(3000)[-8:].sum() == 0 and mask(3000)[:8].sum() == 8 and mask(3001).sum() == 16
    assert stages.cn_frame_indices(16, 2) == (0, 8) and stages.cn_frame_indices(16, 4) == (0, 4, 8, 12)
    with pytest.raises(ValueError, match="cn_frames"):
        stages.cn_frame_indices(4, 5)


def test_shading_schedule_rates():
    c = get_config("paper")
    keys = jax.random.split(jax.random.PRNGKey(0), 4000)
    for stage, step, rate in (("static", 999, None), ("static", 1000, 0.2), ("coarse", 5000, 0.2),
                              ("fine", 15000, 0.0)):
        mode, amb = jax.vmap(lambda k, st=stage, sp=step: stages.shading_schedule(c, st, sp, k))(keys)
        mode, amb = np.asarray(mode), np.asarray(amb)
        assert amb.min() >= 0.1 and amb.max() <= 1.0
        if rate is None:  # the first 20% of the static stage: normal shading only
            assert np.all(mode == stages.SHADING["normal"])
            continue
        assert set(np.unique(mode)) <= {stages.SHADING["lambertian"], stages.SHADING["textureless"]}
        frac = np.mean(mode == stages.SHADING["textureless"])
        assert abs(frac - rate) < 0.03, (stage, frac)  # 4000 draws: 3 sigma ~ 0.019
        assert abs(amb.mean() - 0.55) < 0.02


def test_masked_pearson_matches_numpy():
    rs = np.random.default_rng(0)
    a, b = rs.normal(size=200), rs.normal(size=200)
    b[:120] += 2 * a[:120]
    m = np.zeros(200)
    m[:120] = 1
    want = np.corrcoef(a[:120], b[:120])[0, 1]
    np.testing.assert_allclose(float(stages.masked_pearson(jnp.asarray(a), jnp.asarray(b), jnp.asarray(m))), want,
                               rtol=1e-5)
    # invariant to an affine change of the reference depth (MiDaS disparity scale is arbitrary)
    np.testing.assert_allclose(float(stages.masked_pearson(jnp.asarray(a), jnp.asarray(3 * b + 7), jnp.asarray(m))),
                               want, rtol=1e-5)


def test_reference_losses_weights():
    c = get_config("paper")
    out = {"rgb": jnp.asarray([[1.0, 0, 0], [0, 0, 0]]), "opacity": jnp.asarray([1.0, 0.5]),
           "depth": jnp.asarray([1.0, 2.0])}
    ref = {"rgb": jnp.asarray([[0.0, 0, 0], [1, 1, 1]]), "mask": jnp.asarray([1.0, 0.0]),
           "depth": jnp.asarray([3.0, 1.0])}
    t = stages.reference_losses(out, ref, c)
    np.testing.assert_allclose(float(t["ref_rgb"]), 5.0 * (1.0 / 6.0), rtol=1e-6)  # only the masked pixel
    np.testing.assert_allclose(float(t["ref_mask"]), 0.5 * (0.25 / 2), rtol=1e-6)
    assert float(t["ref_depth"]) == pytest.approx(0.01 * 0.5, abs=1e-6)  # one pixel: correlation 0


def test_prepare_reference_and_prior_checks():
    c = get_config("tiny")
    with pytest.raises(ValueError, match="RGBA"):
        stages.prepare_reference(np.zeros((8, 8, 3)), np.zeros((8, 8)), c)
    with pytest.raises(ValueError, match="square"):
        stages.prepare_reference(np.zeros((8, 6, 4)), np.zeros((8, 6)), c)
    with pytest.raises(ValueError, match="depth"):
        stages.prepare_reference(np.zeros((8, 8, 4)), np.zeros((4, 4)), c)
    img = np.zeros((8, 8, 4))
    img[2:6, 2:6] = 1.0
    ref = stages.prepare_reference(img, np.ones((8, 8)), c)
    n = stages.reference_size(c)
    assert ref["size"] == n == 24 and ref["rgb"].shape == (n * n, 3)
    assert ref["rgb"][0].tolist() == [1.0, 1.0, 1.0] and ref["mask"][0] == 0  # white background outside
    with pytest.raises(ValueError, match="needs a 'zero123' prior"):
        stages.check_priors({"sd": (None, lambda *a: 0)}, c, "static")
    c.stages.static.lambda_zero123 = 0.0
    stages.check_priors({"sd": (None, lambda *a: 0)}, c, "static")  # weight 0: not needed


# ---- hand-over -------------------------------------------------------------------------------------------


def test_static_to_dynamic_hand_over_renders_the_same_at_every_time():
    c = get_config("tiny")
    c.stages.use_occupancy = True
    st = stages.init_static_state(c)
    # a non-trivial static field: random tables
    st["params"] = jax.tree.map(lambda a: a + 0.3 * jax.random.normal(jax.random.PRNGKey(1), a.shape), st["params"])
    st["occupancy"] = jax.random.uniform(jax.random.PRNGKey(2), st["occupancy"].shape)
    st["step"] = jnp.asarray(5, jnp.int32)
    dyn = stages.hand_over(c, st, "coarse")
    assert dyn["params"]["grid"]["tables"].shape[0] == c.grid.time_grid_size and int(dyn["step"]) == 5
    assert dyn["occupancy"].shape[0] == c.render.occupancy_time_bins
    for b in range(dyn["occupancy"].shape[0]):
        np.testing.assert_array_equal(np.asarray(dyn["occupancy"][b]), np.asarray(st["occupancy"][0]))
    r_static = stages.make_stage_renderer(c, "static", 12, shading="albedo")
    r_dyn = stages.make_stage_renderer(c, "coarse", 12, shading="albedo")
    pose = pose_from_spherical(70.0, 35.0, 1.8)
    base = np.asarray(r_static(st["params"], pose, 0.0)["rgb"])
    assert base.std() > 1e-3
    for t in (0.0, 0.2, 0.5, 0.77, 1.0):
        np.testing.assert_allclose(np.asarray(r_dyn(dyn["params"], pose, t)["rgb"]), base, atol=1e-6)
    # the coarse stage's Adam moments and count, as after some steps
    dyn["opt_state"] = jax.tree.map(lambda a: a + jnp.ones_like(a), dyn["opt_state"])
    fine = stages.hand_over(c, dyn, "fine")
    same = lambda x, y: jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), x, y))  # noqa: E731
    assert same(fine["frozen"], dyn["params"]) and same(fine["params"], dyn["params"])
    assert same(fine["occupancy"], dyn["occupancy"]) and int(fine["step"]) == 5
    # official run-cn.sh: a new Trainer loads only the model from --cn_base, so the optimiser starts afresh
    assert same(fine["opt_state"], stages.stage_optimizer(c, "fine").init(dyn["params"]))
    with pytest.raises(ValueError, match="hand-over"):
        stages.hand_over(c, st, "static")


# ---- the steps -----------------------------------------------------------------------------------------------


def _tiny_inputs(scene, n=24):
    ref = reference_camera(size=n)
    r = scenes.render(scene, ref["poses"], ref["K"], n, n, 0.0)
    rgba = np.concatenate([np.asarray(r["rgb"]), np.asarray(r["alpha"])[..., None]], -1)
    return np.clip(rgba, 0, 1), np.asarray(r["depth"])


@pytest.fixture(scope="module")
def scene():
    return scenes.make_scene("orbiting-spheres", shading="flat")


def test_static_step_terms_by_schedule_and_sharded_equals_single(scene):
    """Which terms a step computes (reference steps vs SDS steps, normal phase), and one step on a 4-device
    mesh equals the 1-device step."""
    c = get_config("tiny")
    c.stages.static.iterations = 10  # normal phase: steps < 2
    c.stages.lambda_normal_smooth = 0.0  # checked by value in tests/test_render4d.py; ill-conditioned here
    priors = oracle.make_oracle_priors(scene, kinds=("sd", "zero123"))
    rgba, depth = _tiny_inputs(scene)
    ref = stages.prepare_reference(rgba, depth, c)
    ref = {k: jnp.asarray(ref[k]) for k in ("rgb", "mask", "depth")}
    pp = {k: priors[k][0] for k in ("sd", "zero123")}
    mesh1 = train_loop.make_mesh(1)
    step = stages.make_stage_step(c, "static", priors, mesh1)
    state = stages.init_static_state(c)
    init = jax.tree.map(lambda a: np.asarray(a), state)
    rows = []
    for _ in range(6):
        state, m = step(state, ref, pp)
        rows.append({k: float(v) for k, v in m.items()})
    # tiny: known_iters 2, interval 4 -> reference steps 0, 1, 4; SDS steps 2, 3, 5
    assert [r["reference_step"] for r in rows] == [1, 1, 0, 0, 1, 0]
    for r in rows:
        if r["reference_step"]:
            assert r["ref_rgb"] > 0 and r["ref_mask"] > 0 and r["sd"] == 0 and r["zero123"] == 0
        else:
            assert r["ref_rgb"] == 0 and r["sd"] != 0 and r["orient"] >= 0 and r["normal_tv"] > 0
    # the normal phase is the first 20% of the static steps (2 of 10), then lambertian / textureless
    assert rows[2]["shading"] in (1.0, 2.0) and rows[3]["shading"] in (1.0, 2.0)
    assert rows[0]["shading"] == 0.0  # reference steps log no SDS shading

    # sharded: the same first 3 steps on 4 fake devices. Albedo renders and no normal terms: normals are
    # central differences (eps 1e-2) of densities ~exp(10) (the blob), so the 1e-7 relative differences of
    # another summation order over 4 devices become 0.4% differences of the SDS loss (measured), which says
    # nothing about the sharding itself.
    c.stages.albedo_only = True
    c.stages.lambda_orient = c.stages.lambda_normal_tv = 0.0
    step = stages.make_stage_step(c, "static", priors, mesh1)
    mesh4 = train_loop.make_mesh(4)
    rep = NamedSharding(mesh4, P())
    step4 = stages.make_stage_step(c, "static", priors, mesh4)
    s4 = train_loop.replicate(init, rep)
    s1 = jax.tree.map(jnp.asarray, init)
    for _ in range(3):
        s4, m4 = step4(s4, train_loop.replicate(ref, rep), train_loop.replicate(pp, rep))
        s1, m1 = step(s1, ref, pp)
        for k in m1:
            # the normal terms are finite differences of densities (eps 1e-2): the summation order of 4
            # devices moves them by a few 1e-6 absolute (measured 3.3e-6 on normal_smooth ~ 4e-4)
            np.testing.assert_allclose(float(m4[k]), float(m1[k]), rtol=2e-4, atol=2e-5, err_msg=k)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6),
                 s4["params"], s1["params"])


class _StopAt:
    def __init__(self, step):
        self.step, self.requested = step, False

    def hook(self, stage, done, state):
        if done == self.step:
            self.requested = True


def test_run_stages_resume_bit_identical_across_the_stage_boundary(scene, tmp_path):
    c = get_config("tiny")
    c.stages.static.iterations, c.stages.coarse.iterations, c.stages.fine.iterations = 3, 2, 2
    c.stages.lambda_orient = c.stages.lambda_normal_tv = c.stages.lambda_normal_smooth = 0.0
    c.stages.albedo_only = True
    priors = oracle.make_oracle_priors(scene)
    rgba, depth = _tiny_inputs(scene)
    full = stages.run_stages(rgba, depth, priors, str(tmp_path / "a"), c, progress=False)
    assert full["stopped"] is None and full["fine"]["step"] == 7
    stop = _StopAt(4)  # the first coarse step
    part = stages.run_stages(rgba, depth, priors, str(tmp_path / "b"), c, progress=False, stop=stop,
                             hook=stop.hook)
    assert part["stopped"] == 4 and "fine" not in part
    rest = stages.run_stages(rgba, depth, priors, str(tmp_path / "b"), c, progress=False, resume=True)
    assert rest["stopped"] is None
    for name in ("params", "opt_state", "frozen", "step"):
        jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
                     full["state"][name], rest["state"][name])
    # per-stage metrics with the global step continued
    rows = [json.loads(x) for x in open(tmp_path / "a" / "coarse" / "metrics.jsonl")]
    assert [r["step"] for r in rows] == [4, 5] and rows[0]["stage"] == "coarse"
    assert os.path.isdir(tmp_path / "a" / "fine" / "checkpoints")
    # the coarse stage alone needs the finished static stage of the same folder
    with pytest.raises(ValueError, match="run static first"):
        stages.run_stages(rgba, depth, priors, str(tmp_path / "c"), c, stages=("coarse",), progress=False)


# ---- the chain: what a prior is given is what the field renders from the view the prior is told -------------


def _probe_prior(kind, model, config):
    """A prior whose params are the field's params: it re-renders the field (deterministic, no jitter) from
    the view it is given, with its own camera code (four_d.oracle.oracle_pose), and reports the largest
    difference from its input images as aux["mismatch"]; loss 0 (the field does not move)."""
    from four_d import render as render_lib
    from four_d.oracle import oracle_pose
    from kernels.camera import camera_rays, intrinsics_from_fov

    fa = render_lib.make_field_apply(model)
    rc = config.render

    def render(params, polar, az, radius, t, bg, size):
        o, d = camera_rays(oracle_pose(polar, az, radius), intrinsics_from_fov(40.0, size, size), size, size)
        out = render_lib.render_rays(fa, params, o.reshape(-1, 3), d.reshape(-1, 3), jnp.full((size * size,), t),
                                     None, num_samples=int(rc.num_samples), bound=rc.bound, min_near=rc.min_near,
                                     bg=bg, jitter=False, shading="albedo")
        return out["rgb"].reshape(size, size, 3)

    def flat(x):
        return x.reshape((-1,) + x.shape[2:]) if x.ndim >= 2 else x

    def fn(params, key, images, *rest, view):
        size = images.shape[-2]
        if kind == "zero123":  # its camera from its inputs, time 0
            polar, az, radius = rest
            cams = (polar, az, radius, jnp.zeros_like(az), view["background"])
        else:
            f = images.shape[1] if images.ndim == 5 else 1
            cams = tuple(flat(view[k]) for k in ("polar", "azimuth", "radius", "times")) + (
                jnp.repeat(view["background"], f, axis=0),)
        want = jax.vmap(lambda p, a, r, t, b: render(params, p, a, r, t, b, size))(*cams)
        mismatch = jnp.max(jnp.abs(want - images.reshape(want.shape)))
        aux = {"mismatch": mismatch}
        if kind == "controlnet":  # the condition: the frozen copy (= these params at the hand-over)
            aux["cond_mismatch"] = jnp.max(jnp.abs(want - rest[0].reshape(want.shape)))
        return 0.0 * jnp.sum(images), aux

    fn.needs_view = True
    return fn


def test_stage_renders_match_the_views_given_to_the_priors(scene):
    """Every SDS image of static / coarse / fine steps equals an independent render of the field from the
    camera and time the prior is told (catches mirrored azimuths, frames shifted in time, wrong cameras)."""
    c = get_config("tiny")
    c.stages.render_size = 8
    c.stages.known_iters = 0
    c.stages.known_view_interval = 0  # SDS steps only
    c.stages.albedo_only = True
    c.stages.level_mask_iters = 0
    c.stages.lambda_orient = c.stages.lambda_normal_tv = c.stages.lambda_normal_smooth = 0.0
    c.stages.lambda_entropy = 0.0
    c.reg.lambda_time_tv = 0.0  # nothing may move the field: the probes hold a copy of it
    c.render.jitter = False
    c.stages.coarse.zero_rate = 0.5  # zero123 runs on some coarse steps
    rgba, depth = _tiny_inputs(scene)
    ref = stages.prepare_reference(rgba, depth, c)
    ref = {k: jnp.asarray(ref[k]) for k in ("rgb", "mask", "depth")}
    mesh = train_loop.make_mesh(1)
    state = stages.init_static_state(c)
    state["params"] = jax.tree.map(lambda a: a + 0.5 * jax.random.normal(jax.random.PRNGKey(7), a.shape),
                                   state["params"])
    seen = {}
    for stage, kinds in (("static", ("sd", "zero123")), ("coarse", ("video", "zero123")),
                         ("fine", ("video", "zero123", "controlnet"))):
        if stage != "static":
            state = stages.hand_over(c, state, stage)
        if stage == "coarse":  # a field that changes with time, so a frame rendered at the wrong time differs
            tab = state["params"]["grid"]["tables"]
            state["params"]["grid"]["tables"] = tab + 0.5 * jax.random.normal(jax.random.PRNGKey(8), tab.shape)
        model = stages.stage_model(c, stage)
        copy = jax.tree.map(lambda a: jnp.array(a, copy=True), state["params"])  # the state is donated
        priors = {k: (copy, _probe_prior(k, model, c)) for k in kinds}
        step = stages.make_stage_step(c, stage, priors, mesh)
        pp = {k: priors[k][0] for k in kinds}
        state = {**state, "step": jnp.asarray(stages.stage_bounds(c)[stage][0], jnp.int32)}
        for _ in range(3):
            state, m = step(state, ref, pp)
            for k in kinds:
                if k == "zero123" and stage != "static" and not float(m["zero123_on"]):
                    continue
                seen[(stage, k)] = True
                assert float(m[f"{k}_mismatch"]) < 1e-4, (stage, k, float(m[f"{k}_mismatch"]))
            if stage == "fine":
                assert float(m["controlnet_cond_mismatch"]) < 1e-4
    assert {("static", "sd"), ("static", "zero123"), ("coarse", "video"), ("fine", "controlnet")} <= set(seen)
