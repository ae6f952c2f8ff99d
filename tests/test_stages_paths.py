"""Stage paths nothing else tests: the occupancy grid inside a stage step, stages.batch > 1, and
`four-d invert --resume` (textual inversion stopped after k steps and resumed = the uninterrupted run)."""

import os
import signal

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.four_d import get_config
from four_d import render as render_lib
from four_d import stages, train_loop
from four_d.oracle import oracle_pose
from kernels.camera import camera_rays, intrinsics_from_fov

# ---- four-d invert --resume ----------------------------------------------------------------------------------


def _invert_argv(tmp_path, out, *extra):
    import priors_tiny as tiny

    img = str(tmp_path / "ref.png")
    if not os.path.exists(img):
        cv2.imwrite(img, np.random.default_rng(0).integers(0, 255, (40, 48, 3), dtype=np.uint8))
    return ["invert", img, "--token", "_cat_", "--init-word", "a", "--sd", tiny.sd_folder(True), "--out", str(out),
            "--config", "tiny", "--steps", "4", "--no-progress", *extra]


def test_invert_resume_is_bit_identical(tmp_path, capsys, monkeypatch):
    """4 steps in one go vs stopped (as by SIGINT) after step 2 then `--resume`: the same learned embedding bit
    for bit; the stopped run exits 130 with a checkpoint and no final file; --resume without a run is an error."""
    pytest.importorskip("torch")
    from clitools import signals
    from four_d import cli
    from four_d.priors.textual_inversion import read_learned_embeds

    assert cli.main(_invert_argv(tmp_path, tmp_path / "a")) == 0
    full = read_learned_embeds(str(tmp_path / "a" / "learned_embeds.safetensors"))["_cat_"]
    assert cli.main(_invert_argv(tmp_path, tmp_path / "none", "--resume")) == 2  # nothing to resume
    assert "no run to continue" in capsys.readouterr().err

    class StopAfterTwoSteps(signals.GracefulStop):
        checks = 0

        @property
        def requested(self):  # the loop asks once per step: "SIGINT" arrives during step 2
            StopAfterTwoSteps.checks += 1
            if StopAfterTwoSteps.checks >= 2 and self.signum is None:
                self.signum = signal.SIGINT
            return self.signum is not None

    with monkeypatch.context() as m:
        m.setattr(signals, "GracefulStop", StopAfterTwoSteps)
        assert cli.main(_invert_argv(tmp_path, tmp_path / "b")) == 130
    assert "after step 2 of 4" in capsys.readouterr().err
    b = tmp_path / "b"
    assert not (b / "learned_embeds.safetensors").exists() and (b / "learned_embeds-steps-2.safetensors").exists()
    assert os.listdir(b / "checkpoints") == ["2"]
    half = read_learned_embeds(str(b / "learned_embeds-steps-2.safetensors"))["_cat_"]
    assert np.abs(half - full).max() > 0  # the stop really happened before the end
    assert cli.main(_invert_argv(tmp_path, b, "--resume")) == 0
    resumed = read_learned_embeds(str(b / "learned_embeds.safetensors"))["_cat_"]
    np.testing.assert_array_equal(resumed, full)


# ---- probes: priors that re-render the field from the views they are told -----------------------------------


def _probe(kind, model, config, occupancy=False):
    """A prior whose params hold the field's params (and, with occupancy, the occupancy mask the step must
    use): it re-renders every image it is given from the view it is told (four_d.oracle.oracle_pose cameras,
    render_lib.render_rays without chunking or sharding, jitter off) and reports in aux: mismatch (largest
    difference from its input images), pair_diff (largest difference between batch items 0 and 1); with
    occupancy also plain_diff (the same against a render WITHOUT occupancy, same number of samples) and bg_dev
    (largest difference of the images from the background colour); for "controlnet" also cond_mismatch (the
    frozen render). Its
    loss is 0 (the field does not move)."""
    fa = render_lib.make_field_apply(model)
    rc, cc = config.render, config.cameras
    n = int(rc.occupancy_num_samples) if occupancy else int(rc.num_samples)

    def render(field, mask, polar, az, radius, t, bg, size):
        o, d = camera_rays(oracle_pose(polar, az, radius), intrinsics_from_fov(float(cc.fovy), size, size), size,
                           size)
        out = render_lib.render_rays(fa, field, o.reshape(-1, 3), d.reshape(-1, 3), jnp.full((size * size,), t),
                                     None, num_samples=n, bound=rc.bound, min_near=rc.min_near, bg=bg, jitter=False,
                                     shading="albedo", occupancy=mask, coarse_samples=int(rc.coarse_samples))
        return out["rgb"].reshape(size, size, 3)

    def fn(p, key, images, *rest, view):
        size = images.shape[-2]
        b = view["background"].shape[0]
        if kind in ("sd", "zero123"):
            cams = tuple(view[k] for k in ("polar", "azimuth", "radius")) + (jnp.zeros((b,)), view["background"])
        else:
            f = images.shape[1]
            cams = tuple(view[k].reshape(-1) for k in ("polar", "azimuth", "radius", "times")) + (
                jnp.repeat(view["background"], f, axis=0),)
        mask = p.get("mask")
        want = jax.vmap(lambda *c: render(p["field"], mask, *c, size))(*cams)
        imgs = images.reshape(want.shape)
        per_item = images.reshape((b, -1))
        aux = {"mismatch": jnp.max(jnp.abs(want - imgs)), "pair_diff": jnp.max(jnp.abs(per_item[0] - per_item[-1]))}
        if occupancy:
            plain = jax.vmap(lambda *c: render(p["field"], None, *c, size))(*cams)
            aux["plain_diff"] = jnp.max(jnp.abs(plain - imgs))
            aux["bg_dev"] = jnp.max(jnp.abs(imgs - cams[-1][:, None, None, :]))
        if kind == "controlnet":
            frozen = jax.vmap(lambda *c: render(p["frozen"], mask, *c, size))(*cams)
            aux["cond_mismatch"] = jnp.max(jnp.abs(frozen - rest[0].reshape(frozen.shape)))
        return 0.0 * jnp.sum(images), aux

    fn.needs_view = True
    return fn


def _quiet_config(batch=1):
    """tiny config with SDS steps only, albedo renders, no jitter, no terms that move the field by themselves."""
    c = get_config("tiny")
    c.stages.render_size = 8
    c.stages.batch = batch
    c.stages.known_iters = 0
    c.stages.known_view_interval = 0
    c.stages.albedo_only = True
    c.stages.level_mask_iters = 0
    c.stages.lambda_orient = c.stages.lambda_normal_tv = c.stages.lambda_normal_smooth = 0.0
    c.stages.lambda_entropy = 0.0
    c.reg.lambda_time_tv = 0.0
    c.render.jitter = False
    return c


def _ref(c):
    n = stages.reference_size(c) ** 2
    return {"rgb": jnp.ones((n, 3)), "mask": jnp.ones((n,)), "depth": jnp.ones((n,))}  # unused: SDS steps only


def _perturbed_static_state(c, seed=7):
    state = stages.init_static_state(c)
    state["params"] = jax.tree.map(lambda a: a + 0.5 * jax.random.normal(jax.random.PRNGKey(seed), a.shape),
                                   state["params"])
    return state


# ---- occupancy inside a stage step ---------------------------------------------------------------------------


def test_occupancy_grid_cadence_and_empty_space_skipping():
    """Static stage with stages.use_occupancy: the grid is refreshed by the step exactly when step %
    render.occupancy_update_every == 0 (max(decay grid, density at jittered cell points) with the step's own key,
    from the parameters before the update), and the SDS images are rendered with THAT grid's mask: an
    independent render with the expected mask matches them, a render without the mask does not (a partly
    occupied grid changes the render); an empty grid gives the background colour only although the field is
    dense (the step skips empty space); a fully occupied grid gives the brute-force render without occupancy
    (the same samples: the grid is exact)."""
    c = _quiet_config()
    c.stages.use_occupancy = True
    c.stages.static.lambda_zero123 = 0.0  # SD alone
    c.render.occupancy_update_every = 2  # not the tiny default (4)
    rc = c.render
    model = stages.stage_model(c, "static")
    fa = render_lib.make_field_apply(model)
    mesh = train_loop.make_mesh(1)
    state = _perturbed_static_state(c)
    step_fn = stages.make_stage_step(c, "static", {"sd": ({}, _probe("sd", model, c, occupancy=True))}, mesh)
    g = int(rc.occupancy_resolution)
    overrides = {3: jnp.zeros((1, g, g, g)), 5: jnp.full((1, g, g, g), 100.0)}  # empty / fully occupied
    rows = []
    for step in range(6):
        if step in overrides:
            state = {**state, "occupancy": overrides[step]}
        params = jax.tree.map(lambda a: jnp.array(a, copy=True), state["params"])  # the state is donated
        grid = jnp.array(state["occupancy"], copy=True)
        if step % 2 == 0:
            k_occ = jax.random.split(train_loop.step_key(int(c.seed), step), 4)[2]
            grid = render_lib.update_occupancy(grid, lambda x, t, p=params: fa(p, x, t, None)["sigma"], k_occ,
                                               bound=rc.bound, decay=rc.occupancy_decay)
        mask = render_lib.occupancy_mask(grid, rc.density_threshold)
        state, m = step_fn(state, _ref(c), {"sd": {"field": params, "mask": mask}})
        np.testing.assert_allclose(np.asarray(state["occupancy"]), np.asarray(grid), rtol=1e-6, err_msg=str(step))
        m = {k: float(v) for k, v in m.items()}
        assert m["reference_step"] == 0.0
        assert m["occupied_fraction"] == pytest.approx(float(jnp.mean(mask)))
        assert m["sd_mismatch"] < 1e-5, (step, m["sd_mismatch"])
        rows.append(m)
    partial = [r for r in rows[:3] if 0.0 < r["occupied_fraction"] < 1.0]
    assert partial and max(r["sd_plain_diff"] for r in partial) > 1e-2  # the mask matters
    assert rows[3]["occupied_fraction"] == 0.0 and rows[3]["sd_bg_dev"] < 1e-6  # empty grid: background only
    assert rows[3]["sd_plain_diff"] > 0.1  # ... although the field renders something there
    assert rows[5]["occupied_fraction"] == 1.0 and rows[5]["sd_plain_diff"] < 1e-5  # full grid = brute force


# ---- stages.batch > 1 ----------------------------------------------------------------------------------------


def test_batch_of_two_cameras_and_clips_reaches_every_prior():
    """stages.batch = 2 in the static and the fine stage: every prior is given 2 images / clips in one call
    (the prior averages over them: official / B), each equal to an independent render of the field from the
    view the prior is told for that item, the two items differ (2 cameras, not one repeated), and the fine
    stage's frozen-model condition is the render of each clip's own ControlNet frames. (Equality of a B = 2
    step with two B = 1 steps cannot be checked: the B cameras are drawn jointly from the step key.)"""
    c = _quiet_config(batch=2)
    c.stages.coarse.zero_rate = 1.0  # every clip starts at t = 0 ...
    c.stages.coarse.mirror_rate = 0.0  # ... unmirrored: zero123 runs on frame 0 of both clips
    mesh = train_loop.make_mesh(1)
    state = _perturbed_static_state(c)
    for stage, kinds in (("static", ("sd", "zero123")), ("fine", ("video", "zero123", "controlnet"))):
        if stage == "fine":
            state = stages.hand_over(c, stages.hand_over(c, state, "coarse"), "fine")
            tab = state["params"]["grid"]["tables"]  # a field that changes with time
            state["params"]["grid"]["tables"] = tab + 0.5 * jax.random.normal(jax.random.PRNGKey(8), tab.shape)
        model = stages.stage_model(c, stage)
        step_fn = stages.make_stage_step(c, stage, {k: ({}, _probe(k, model, c)) for k in kinds}, mesh)
        state = {**state, "step": jnp.asarray(stages.stage_bounds(c)[stage][0], jnp.int32)}
        for _ in range(2):
            field = jax.tree.map(lambda a: jnp.array(a, copy=True), state["params"])
            pp = {k: {"field": field} for k in kinds}
            if stage == "fine":
                pp["controlnet"]["frozen"] = jax.tree.map(lambda a: jnp.array(a, copy=True), state["frozen"])
            state, m = step_fn(state, _ref(c), pp)
            m = {k: float(v) for k, v in m.items()}
            for k in kinds:
                assert m[f"{k}_mismatch"] < 1e-4, (stage, k, m[f"{k}_mismatch"])
                assert m[f"{k}_pair_diff"] > 1e-3, (stage, k)
            if stage == "fine":
                assert m["zero123_on"] == 1.0 and m["controlnet_cond_mismatch"] < 1e-4
