"""four_d/oracle.py: exact-denoiser priors, and the known answer of the static stage trained by them.

The closed forms: with eps_c = (z_t - sqrt(a) z*) / sqrt(1 - a), eps_u the same for the grey image z_u and
the official CFG eps_c + s (eps_c - eps_u), the SDS gradient w.r.t. the latents is
sqrt(a (1 - a)) ((z - z*) + s (z_u - z*)) / B (w = 1 - a), whatever the noise.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.four_d import get_config
from four_d import oracle, scenes, stages, train_loop
from four_d.cameras import pose_from_spherical, reference_camera


@pytest.fixture(scope="module")
def scene():
    return scenes.make_scene("orbiting-spheres", shading="flat")


def _exact(scene, polar, azimuth, radius, t, size, bg):
    """Target over a background, built from four_d.cameras (not the oracle's own pose code)."""
    out = scenes.render(scene, pose_from_spherical(polar, azimuth, radius), reference_camera(size=size)["K"],
                        size, size, t)
    a = np.asarray(out["alpha"])[..., None]
    return np.asarray(out["rgb"]) * a + np.asarray(bg) * (1 - a)


def _view(polar, azimuth, radius, times, bg):
    f = lambda v: jnp.asarray(v, jnp.float32)
    return {"polar": f(polar), "azimuth": f(azimuth), "radius": f(radius), "times": f(times), "background": f(bg)}


@pytest.mark.parametrize("scale", [0.0, 2.0])
def test_sd_oracle_gradient_closed_form(scene, scale):
    params, fn = oracle.make_oracle_prior("sd", scene, guidance_scale=scale)
    polar, az, r = np.array([70.0, 100.0]), np.array([30.0, -120.0]), np.array([1.8, 1.8])
    bg = np.array([[0.2, 0.5, 0.9], [1.0, 1.0, 1.0]], np.float32)
    view = _view(polar, az, r, [0.0, 0.0], bg)
    x = jax.random.uniform(jax.random.PRNGKey(0), (2, 12, 12, 3))
    (loss, aux), g = jax.value_and_grad(lambda im: fn(params, jax.random.PRNGKey(1), im, jnp.asarray(az),
                                                      view=view), has_aux=True)(x)
    tgt = np.stack([_exact(scene, polar[i], az[i], r[i], 0.0, 12, bg[i]) for i in range(2)])
    a = np.asarray(aux["alpha_bar"])[:, None, None, None]
    z, zs, zu = 2 * np.asarray(x) - 1, 2 * tgt - 1, 0.0
    # dL/dx = dL/dz * dz/dx (= 2)
    want = 2 * np.sqrt(a * (1 - a)) * ((z - zs) + scale * (zu - zs)) / 2
    np.testing.assert_allclose(np.asarray(g), want, rtol=2e-4, atol=2e-6)
    assert np.all((np.asarray(aux["t"]) >= 200) & (np.asarray(aux["t"]) <= 600))


@pytest.mark.parametrize("latent", oracle.LATENTS)
def test_oracle_gradient_vanishes_exactly_at_the_target(scene, latent):
    params, fn = oracle.make_oracle_prior("zero123", scene, latent=latent)
    bg = np.array([[0.3, 0.3, 0.3]], np.float32)
    tgt = _exact(scene, 60.0, 135.0, 1.8, 0.0, 16, bg[0])[None]
    view = _view([60.0], [135.0], [1.8], [0.0], bg)

    def grad(images, az):
        return np.asarray(jax.grad(lambda im: fn(params, jax.random.PRNGKey(2), im, jnp.asarray([60.0]),
                                                 jnp.asarray([az]), jnp.asarray([1.8]), view=view)[0])(images))

    assert np.abs(grad(jnp.asarray(tgt), 135.0)).max() < 1e-5
    # the camera comes from the zero123 inputs (through the token): the mirrored azimuth is another target
    assert np.abs(grad(jnp.asarray(tgt), -135.0)).max() > 1e-2


def test_video_oracle_uses_each_frames_time_and_camera(scene):
    params, fn = oracle.make_oracle_prior("video", scene, t_range=(0.02, 0.98))
    times = np.array([[0.0, 0.25, 0.5]])
    az = np.array([[10.0, 40.0, 70.0]])
    pol = np.full((1, 3), 80.0)
    bg = np.ones((1, 3), np.float32)
    view = _view(pol, az, np.full((1, 3), 1.8), times, bg)
    clip = np.stack([_exact(scene, 80.0, az[0, k], 1.8, times[0, k], 16, bg[0]) for k in range(3)])[None]

    def gnorm(c):
        g = jax.grad(lambda im: fn(params, jax.random.PRNGKey(3), im, jnp.asarray([10.0]), view=view)[0])(c)
        return float(jnp.abs(g).max())

    assert gnorm(jnp.asarray(clip)) < 1e-5
    shifted = np.concatenate([clip[:, 1:], clip[:, -1:]], axis=1)  # frame k shows time k + 1
    assert gnorm(jnp.asarray(shifted)) > 1e-2


def test_oracle_rejects_bad_arguments(scene):
    with pytest.raises(ValueError, match="kind"):
        oracle.make_oracle_prior("dalle", scene)
    with pytest.raises(ValueError, match="even"):
        oracle.make_oracle_prior("sd", scene, latent="linear_vae", size=15)


def _known_answer_config():
    c = get_config("tiny")
    c.stages.render_size = 32
    c.stages.albedo_only = True  # the target is unlit
    c.stages.lambda_orient = c.stages.lambda_normal_tv = c.stages.lambda_normal_smooth = 0.0
    c.stages.level_mask_iters = 0
    c.render.num_samples = 24
    c.render.train_chunk = 1024
    c.render.remat = False
    c.grid.finest_resolution = 64
    c.stages.static.iterations = 120
    return c


def _reference_inputs(scene, cfg, n=48):
    """The stages' reference-view inputs (rgb, mask, depth) from the exact n x n render at the reference camera."""
    ref = reference_camera(size=n)
    r = scenes.render(scene, ref["poses"], ref["K"], n, n, 0.0)
    rgba = np.concatenate([np.asarray(r["rgb"]), np.asarray(r["alpha"])[..., None]], -1)
    refd = stages.prepare_reference(rgba, np.asarray(r["depth"]), cfg)
    return {k: jnp.asarray(refd[k]) for k in ("rgb", "mask", "depth")}


def test_static_stage_recovers_the_object_from_oracle_priors(scene):
    """Short known answer: 120 static steps with oracle SD + zero123 priors (32x32 renders) raise the PSNR of
    held-out views (none is the reference view) against the exact renders by several dB."""
    cfg = _known_answer_config()
    priors = oracle.make_oracle_priors(scene, kinds=("sd", "zero123"))
    refd = _reference_inputs(scene, cfg)
    mesh = train_loop.make_mesh(1)
    step = stages.make_stage_step(cfg, "static", priors, mesh)
    pp = {k: priors[k][0] for k in ("sd", "zero123")}
    state = stages.init_static_state(cfg)
    render = stages.make_stage_renderer(cfg, "static", 32)
    views = [(75.0, 60.0), (95.0, 150.0), (70.0, -100.0), (100.0, -30.0)]

    def psnr(params, target):
        out = []
        for polar, az in views:
            pred = np.clip(np.asarray(render(params, pose_from_spherical(polar, az, 1.8), 0.0)["rgb"]), 0, 1)
            gt = _exact(target, polar, az, 1.8, 0.0, 32, np.ones(3))
            out.append(-10 * np.log10(np.mean((pred - gt) ** 2)))
        return float(np.mean(out))

    before = psnr(state["params"], scene)
    for _ in range(int(cfg.stages.static.iterations)):
        state, m = step(state, refd, pp)
    after = psnr(state["params"], scene)
    assert np.isfinite(float(m["loss"]))
    # measured 7.85 -> 10.53 dB (the x-mirrored object: 10.32 dB, too close to tell apart this early: the
    # mirror / time-shift checks are tests/test_stages.py::test_stage_renders_match_the_views_given_to_the_priors)
    assert after > before + 2.0, (before, after)


def test_coarse_stage_learns_the_motion_from_the_video_oracle(scene):
    """Short known answer of the coarse stage: from a fresh field handed over to T = 4 time grids (nodes at
    t = 0, 1/3, 2/3, 1), 60 coarse steps with the oracle video + zero123 priors (24x24, 2-frame clips, the
    official reference steps every 4th step at t = 0) must raise the held-out PSNR at t = 1/3, 2/3 by several
    dB AND put the motion the right way round: closer to the exact renders at t than at 1 - t (the
    mirrored motion, which for these times is also the motion shifted by one time grid).

    The learning rates are 5x / 10x the official ones (optim.lr_grid 0.05, lr_mlp 0.01) so that a test-sized
    run gets past the empty field; the official schedule is the benchmark's (benchmarks/stages_oracle.py:
    >= 20 dB held-out at 64x64). Measured (shared CPU): t > 0 7.8 -> 15.7 dB; true - mirrored +1.7 dB."""
    cfg = _known_answer_config()
    cfg.stages.render_size = 24
    cfg.grid.time_grid_size = 4
    cfg.stages.coarse.num_frames = 2
    cfg.stages.coarse.precision = 6  # frame times are multiples of 1/6
    cfg.stages.known_iters = 0
    cfg.stages.static.iterations = 0
    cfg.stages.coarse.iterations = 60
    cfg.optim.lr_grid = 0.05
    cfg.optim.lr_mlp = 0.01
    size = int(cfg.stages.render_size)
    priors = oracle.make_oracle_priors(scene, kinds=("video", "zero123"))
    refd = _reference_inputs(scene, cfg)
    step = stages.make_stage_step(cfg, "coarse", priors, train_loop.make_mesh(1))
    pp = {k: priors[k][0] for k in ("video", "zero123")}
    state = stages.hand_over(cfg, stages.init_static_state(cfg), "coarse")
    render = stages.make_stage_renderer(cfg, "coarse", size)
    views = [(75.0, 60.0), (95.0, 150.0), (70.0, -100.0), (100.0, -30.0)]
    times = (1.0 / 3.0, 2.0 / 3.0)

    def psnr(params, target_time):
        out = []
        for t in times:
            for polar, az in views:
                pred = np.clip(np.asarray(render(params, pose_from_spherical(polar, az, 1.8), t)["rgb"]), 0, 1)
                gt = _exact(scene, polar, az, 1.8, target_time(t), size, np.ones(3))
                out.append(-10 * np.log10(np.mean((pred - gt) ** 2)))
        return float(np.mean(out))

    before = psnr(state["params"], lambda t: t)
    for _ in range(int(cfg.stages.coarse.iterations)):
        state, m = step(state, refd, pp)
    assert np.isfinite(float(m["loss"]))
    after = psnr(state["params"], lambda t: t)
    mirrored = psnr(state["params"], lambda t: 1.0 - t)
    assert after > before + 4.0, (before, after)
    # mutations of the stage's render times (four_d/stages.py sds_loss), this assertion's (after, mirrored):
    # 1 - t: (14.18, 15.47); t + 1/3 (one time grid): (13.87, 14.70); frames reversed: (14.23, 15.05)
    assert after > mirrored + 0.75, (after, mirrored)
