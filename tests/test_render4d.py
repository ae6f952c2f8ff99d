"""four_d/render.py: closed-form opacity, occupancy-guided sampling, chunked/sharded images, regularisers."""

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

from four_d import render
from kernels.camera import intrinsics_from_fov, look_at

BALL_SIGMA = 20.0
BALL_RADIUS = 0.25
COLOR = jnp.array([0.9, 0.3, 0.1], jnp.float32)


def constant_field(sigma):
    def apply(params, x, t, level_mask=None):
        del params, t, level_mask
        return {"sigma": jnp.full(x.shape[:1], sigma, jnp.float32), "albedo": jnp.broadcast_to(COLOR, x.shape)}

    return apply


def ball_centers(t):
    # two balls drifting slowly in y over t in [0, 1]
    dy = 0.1 * (t - 0.5)
    return jnp.stack([jnp.stack([-0.4 + 0 * t, dy, 0 * t], -1), jnp.stack([0.4 + 0 * t, -dy, 0 * t], -1)], -2)


def two_ball_field(params, x, t, level_mask=None):
    """sigma = BALL_SIGMA inside either ball (radius 0.25), 0 elsewhere; albedo by ball."""
    del params, level_mask
    c = ball_centers(t)  # [N, 2, 3]
    d2 = jnp.sum((x[:, None, :] - c) ** 2, -1)
    inside = d2 < BALL_RADIUS**2
    sigma = jnp.where(jnp.any(inside, -1), BALL_SIGMA, 0.0)
    albedo = jnp.where(inside[:, :1], jnp.array([0.9, 0.2, 0.1]), jnp.array([0.1, 0.3, 0.9]))
    return {"sigma": sigma.astype(jnp.float32), "albedo": albedo.astype(jnp.float32)}


def test_constant_density_opacity_exact():
    # Rays along +z from z = -3 through the box [-1, 1]^3: near 2, far 4, path length 2 exactly.
    o = jnp.array([[0.0, 0.0, -3.0], [0.3, -0.5, -3.0], [0.9, 0.9, -3.0]])
    d = jnp.tile(jnp.array([[0.0, 0.0, 1.0]]), (3, 1))
    for sigma in (0.1, 1.0, 3.0):
        out = render.render_rays(constant_field(sigma), None, o, d, jnp.zeros(3), jax.random.key(0),
                                 num_samples=32, bg=jnp.ones(3))
        expect = 1.0 - np.exp(-sigma * 2.0)
        np.testing.assert_allclose(out["opacity"], expect, atol=1e-5)
        np.testing.assert_allclose(out["rgb"], np.broadcast_to(expect * COLOR + (1 - expect), (3, 3)), atol=1e-5)


def test_ball_opacity_matches_chord():
    """A constant-density ball: opacity = 1 - exp(-sigma * chord), chord = 2 sqrt(r^2 - b^2)."""
    sigma, rad = 2.0, 0.6

    def ball(params, x, t, level_mask=None):
        s = jnp.where(jnp.sum(x * x, -1) < rad**2, sigma, 0.0)
        return {"sigma": s.astype(jnp.float32), "albedo": jnp.broadcast_to(COLOR, x.shape)}

    b = jnp.array([0.0, 0.2, 0.4, 0.55, 0.7])
    o = jnp.stack([b, jnp.zeros_like(b), jnp.full_like(b, -3.0)], -1)
    d = jnp.tile(jnp.array([[0.0, 0.0, 1.0]]), (5, 1))
    s = 2000
    out = render.render_rays(ball, None, o, d, jnp.zeros(5), None, num_samples=s, jitter=False)
    chord = 2.0 * np.sqrt(np.maximum(rad**2 - np.asarray(b) ** 2, 0.0))
    expect = 1.0 - np.exp(-sigma * chord)
    # midpoint quadrature of an indicator: the captured length is off by at most one step delta
    delta = 2.0 / s
    np.testing.assert_allclose(out["opacity"], expect, atol=sigma * delta + 1e-6)


def _occupancy_for_two_balls(res=32, bins=4, updates=6):
    grid = render.init_occupancy(res, bins)
    dens = lambda x, t: two_ball_field(None, x, t)["sigma"]
    upd = jax.jit(lambda g, k: render.update_occupancy(g, dens, k, bound=1.0, decay=0.95, chunk=8192))
    for i in range(updates):
        grid = upd(grid, jax.random.key(i))
    return grid


def test_update_occupancy_matches_bruteforce():
    """One refresh from zeros = the density at the jittered points (recomputed here with NumPy)."""
    res, bins = 8, 2
    key = jax.random.key(3)
    dens = lambda x, t: two_ball_field(None, x, t)["sigma"]
    grid = render.update_occupancy(jnp.full((bins, res, res, res), 7.0), dens, key, decay=0.5, chunk=100)
    # The same jittered points, drawn as update_occupancy documents, evaluated point by point.
    kx, kt = jax.random.split(key)
    cell = 2.0 / res
    centers = np.asarray(render.occupancy_cell_centers(res))
    x = centers[None] + np.asarray(jax.random.uniform(kx, (bins, res**3, 3), minval=-0.5, maxval=0.5)) * cell
    t = (np.arange(bins)[:, None] + np.asarray(jax.random.uniform(kt, (bins, res**3)))) / bins
    c = np.asarray(ball_centers(jnp.asarray(t)))  # [B, N, 2, 3]
    inside = np.any(np.sum((x[:, :, None] - c) ** 2, -1) < BALL_RADIUS**2, -1)
    expect = np.maximum(3.5, np.where(inside, BALL_SIGMA, 0.0)).reshape(bins, res, res, res)
    np.testing.assert_allclose(grid, expect, atol=1e-6)
    # every cell centre lies in its own cell under lookup_occupancy
    mask = jnp.zeros((1, res, res, res), bool).at[0, 2, 5, 7].set(True)
    hit = render.lookup_occupancy(mask, jnp.asarray(centers), jnp.zeros(res**3))
    assert int(hit.sum()) == 1 and int(np.argmax(hit)) == (2 * res + 5) * res + 7


def test_occupancy_skipping_matches_dense_sampling():
    """Two-pass occupancy sampling with 48 samples vs uniform sampling with 1024 samples.

    Tolerance: mean |diff| < 5e-3 and 99th percentile < 0.05 per pixel channel (silhouette pixels
    can differ where an occupancy cell only grazes a ball); meanwhile, at 48 samples each, the skipping
    renderer puts > 4x as many samples inside the balls as uniform sampling does.
    """
    grid = _occupancy_for_two_balls()
    mask = render.occupancy_mask(grid, threshold=10.0)
    h = w = 24
    K = intrinsics_from_fov(40.0, h, w)
    pose = look_at((0.0, 0.6, 1.7), (0.0, 0.0, 0.0), up=(0.0, 1.0, 0.0))
    t = 0.55
    kw = dict(bound=1.0, min_near=0.2, bg=jnp.ones(3), chunk=288)
    ref = render.render_image(two_ball_field, None, pose, K, h, w, t, num_samples=1024, **kw)
    skip = render.render_image(two_ball_field, None, pose, K, h, w, t, num_samples=48, occupancy=mask,
                               coarse_samples=256, **kw)
    diff = np.abs(np.asarray(skip["rgb"]) - np.asarray(ref["rgb"]))
    assert diff.mean() < 5e-3, diff.mean()
    assert np.quantile(diff, 0.99) < 0.05, np.quantile(diff, 0.99)
    assert np.asarray(ref["opacity"]).max() > 0.99  # the balls are in view and opaque

    # fraction of evaluated samples in empty space
    from kernels.camera import camera_rays

    o, d = camera_rays(pose, K, h, w)
    o, d = o.reshape(-1, 3), d.reshape(-1, 3)
    tt = jnp.full((h * w,), t)
    a = render.render_rays(two_ball_field, None, o, d, tt, None, num_samples=48, jitter=False, occupancy=mask)
    b = render.render_rays(two_ball_field, None, o, d, tt, None, num_samples=48, jitter=False)
    sa, sb = np.asarray(a["sigma"]), np.asarray(b["sigma"])
    # measured: 5234 vs 998 samples inside the balls; 81% vs 96% of all samples in empty space
    assert (sa > 0).sum() > 4 * (sb > 0).sum(), ((sa > 0).sum(), (sb > 0).sum())
    assert np.mean(sa == 0) < 0.85 and np.mean(sb == 0) > 0.95
    # the occupied length of a ray that meets the occupied cells is ~7x shorter than its box length
    hit = np.asarray(a["occupied_length"]) > 0
    assert np.asarray(a["occupied_length"])[hit].mean() < np.asarray(b["occupied_length"])[hit].mean() / 4


def test_occupancy_samples_uniform_over_occupied_interval():
    """A ray through one occupied slab: samples are uniform in it and deltas sum to its length."""
    mask = jnp.zeros((1, 4, 4, 4), bool).at[0, :, :, 2].set(True)  # z in [0, 0.5)
    o = jnp.array([[0.1, 0.1, -3.0]])
    d = jnp.array([[0.0, 0.0, 1.0]])
    s = render.occupancy_samples(mask, o, d, jnp.zeros(1), jnp.array([2.0]), jnp.array([4.0]), None, 8,
                                 coarse_samples=64, jitter=False)
    np.testing.assert_allclose(s["occupied_length"], [0.5], atol=1e-6)
    np.testing.assert_allclose(s["t_mid"][0], 3.0 + (np.arange(8) + 0.5) / 8 * 0.5, atol=1e-5)
    np.testing.assert_allclose(np.diff(s["t_edges"][0]), 0.5 / 8, atol=1e-6)


def test_sharded_render_equals_single_device():
    devs = np.array(jax.devices())
    if devs.size < 2:
        pytest.skip("needs several (fake) devices")
    mesh = Mesh(devs, ("data",))
    h, w = 10, 9  # 90 rays: not a multiple of the device count, so padding is exercised
    K = intrinsics_from_fov(40.0, h, w)
    pose = look_at((0.3, 0.5, 1.8), (0.0, 0.0, 0.0), up=(0.0, 1.0, 0.0))
    kw = dict(num_samples=32, bg=jnp.ones(3), chunk=16)
    one = render.render_image(two_ball_field, None, pose, K, h, w, 0.3, **kw)
    many = render.render_image(two_ball_field, None, pose, K, h, w, 0.3, mesh=mesh, **kw)
    for k in ("rgb", "depth", "opacity"):
        np.testing.assert_allclose(many[k], one[k], atol=1e-6)
    assert float(one["opacity"].max()) > 0.9


def test_normal_regularisers_closed_form():
    # TV of a linear ramp: every horizontal difference is a, vertical b.
    a, b = 0.1, 0.05
    i, j = np.meshgrid(np.arange(6), np.arange(7), indexing="ij")
    img = np.stack([a * j + b * i] * 3, -1).astype(np.float32)
    np.testing.assert_allclose(render.normal_tv_loss(jnp.asarray(img)), a**2 + b**2, rtol=1e-5)
    # Gaussian blur (kernel 9, sigma 1.7 as torchvision) vs OpenCV with reflect-101 borders.
    rs = np.random.default_rng(0)
    x = rs.random((12, 13, 3)).astype(np.float32)
    ours = render.gaussian_blur(jnp.asarray(x), 9)
    ref = cv2.GaussianBlur(x, (9, 9), sigmaX=1.7, sigmaY=1.7, borderType=cv2.BORDER_REFLECT_101)
    np.testing.assert_allclose(ours, ref, atol=1e-5)
    np.testing.assert_allclose(render.normal_smooth_loss(jnp.asarray(x)), np.mean((x - ref) ** 2), rtol=1e-4)


def _torch_gaussian_blur(x, kernel_size=9):
    """torchvision.transforms.functional.gaussian_blur written from its documented definition:
    sigma = 0.3 ((k - 1) / 2 - 1) + 0.8, separable normalised kernel, reflect padding, per channel."""
    import torch

    sigma = 0.3 * ((kernel_size - 1) * 0.5 - 1) + 0.8
    half = (kernel_size - 1) * 0.5
    t = torch.linspace(-half, half, kernel_size, dtype=torch.float64)
    k1 = torch.exp(-0.5 * (t / sigma) ** 2)
    k1 = k1 / k1.sum()
    k2 = (k1[:, None] * k1[None, :]).expand(x.shape[1], 1, kernel_size, kernel_size)
    p = kernel_size // 2
    xp = torch.nn.functional.pad(x, [p, p, p, p], mode="reflect")
    return torch.nn.functional.conv2d(xp, k2, groups=x.shape[1])


def test_normal_smooth_loss_gradient_matches_torch(rng):
    """Official F.mse_loss(x, TF.gaussian_blur(x, 9)) keeps the blur in the graph: value and gradient
    vs a PyTorch float64 reference (tolerance 1e-6 relative to the largest gradient entry)."""
    import torch

    x = rng.random((2, 11, 13, 3)).astype(np.float32)
    xt = torch.tensor(x.transpose(0, 3, 1, 2), dtype=torch.float64, requires_grad=True)
    loss_t = torch.nn.functional.mse_loss(xt, _torch_gaussian_blur(xt))
    loss_t.backward()
    g_ref = xt.grad.numpy().transpose(0, 2, 3, 1)
    val, g = jax.value_and_grad(render.normal_smooth_loss)(jnp.asarray(x))
    np.testing.assert_allclose(float(val), float(loss_t), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(g), g_ref, atol=1e-6 * np.abs(g_ref).max())


def gauss_field(params, x, t, level_mask=None):
    """sigma = 30 exp(-|x|^2 / (2 0.3^2)): radial normals n = x / |x|; constant albedo."""
    del params, t, level_mask
    s = 30.0 * jnp.exp(-jnp.sum(x * x, -1) / (2 * 0.3**2))
    return {"sigma": s, "albedo": jnp.broadcast_to(COLOR, x.shape)}


def test_regularisers_against_numpy_terms():
    """Every weighted term and the total vs NumPy/OpenCV recomputations from the per-sample arrays of
    the same render: orientation mean(w max(0, n.d)^2), entropy mean(H(w)) ramped by min(1, 2 step /
    iters), squared TV of the normal image, MSE against its 9-tap Gaussian blur (cv2)."""
    import ml_collections

    reg = ml_collections.ConfigDict(dict(lambda_orient=1e-2, lambda_entropy=1e-3, lambda_normal_tv=0.5,
                                         lambda_normal_smooth=0.5, normal_smooth_kernel=9))
    h, w = 11, 12
    K = intrinsics_from_fov(40.0, h, w)
    pose = look_at((0.4, 0.3, 1.6), (0.0, 0.0, 0.0), up=(0.0, 1.0, 0.0))
    from kernels.camera import camera_rays

    o, d = (a.reshape(-1, 3) for a in camera_rays(pose, K, h, w))
    s = 24
    out = render.render_rays(gauss_field, None, o, d, jnp.zeros(h * w), None, num_samples=s, jitter=False,
                             compute_normals=True)
    terms = render.regularisers(out, reg, num_samples=s, step=25, iterations=100, image_shape=(h, w))
    wts, n = (np.asarray(out[k], np.float64) for k in ("weights", "normals"))
    dd = np.asarray(d, np.float64)
    orient = np.mean(wts * np.maximum(np.einsum("rsc,rc->rs", n, dd), 0) ** 2)
    wc = np.clip(wts, 1e-5, 1 - 1e-5)
    ent = np.mean(-wc * np.log2(wc) - (1 - wc) * np.log2(1 - wc))
    nimg = np.asarray(out["normal_image"], np.float32).reshape(h, w, 3)
    tv = np.mean(np.diff(nimg, axis=0) ** 2) + np.mean(np.diff(nimg, axis=1) ** 2)
    blur = cv2.GaussianBlur(nimg, (9, 9), sigmaX=1.7, sigmaY=1.7, borderType=cv2.BORDER_REFLECT_101)
    smooth = np.mean((nimg - blur) ** 2)
    expect = {"orient": 1e-2 * orient, "entropy": 1e-3 * 0.5 * ent, "normal_tv": 0.5 * tv,
              "normal_smooth": 0.5 * smooth}
    assert orient > 1e-4 and tv > 1e-4 and smooth > 1e-5  # every term is exercised
    for k, v in expect.items():
        np.testing.assert_allclose(float(terms[k]), v, rtol=1e-4, err_msg=k)
    np.testing.assert_allclose(float(terms["total"]), sum(expect.values()), rtol=1e-4)
    # the ramp saturates at step >= iters / 2; zero weights drop the term
    full = render.regularisers(out, reg, num_samples=s, step=80, iterations=100)
    np.testing.assert_allclose(float(full["entropy"]), 1e-3 * ent, rtol=1e-4)
    assert "normal_tv" not in full  # no image shape: the normal-image terms are skipped
    off = render.regularisers(out, dict(reg, lambda_orient=0.0), num_samples=s, step=80, iterations=100)
    assert "orient" not in off


def test_depth_is_z_depth_and_distance_is_along_the_ray():
    """An opaque sphere (sigma 1e4 inside radius 0.4) seen off-axis through a non-default K (fx != fy,
    off-centre principal point, odd 15x17 image): "depth" = z-depth and "distance" = ray distance of
    the closed-form hit (four_d.scenes.render), to within one sample step (2 / 512 + 1e-3)."""
    from four_d import scenes
    from kernels.camera import intrinsics

    scene = scenes.make_scene("single-sphere")
    h, w = 15, 17
    K = intrinsics(14.0, 12.5, 9.3, 6.1)
    pose = look_at((0.9, 0.5, 1.5), (0.15, -0.1, 0.0), up=(0.0, 1.0, 0.0))

    def ball(params, x, t, level_mask=None):
        sig = jnp.where(jnp.sum(x * x, -1) < 0.4**2, 1e4, 0.0)
        return {"sigma": sig.astype(jnp.float32), "albedo": jnp.broadcast_to(COLOR, x.shape)}

    out = render.render_image(ball, None, pose, K, h, w, 0.0, num_samples=512, chunk=64)
    ref = scenes.render(scene, pose, K, h, w, 0.0)
    hit = (np.asarray(ref["alpha"]) > 0) & (np.asarray(out["opacity"]) > 0.999)
    assert hit.sum() > 20
    tol = 2.0 / 512 + 1e-3
    np.testing.assert_allclose(np.asarray(out["depth"])[hit], np.asarray(ref["depth"])[hit], atol=tol)
    np.testing.assert_allclose(np.asarray(out["distance"])[hit], np.asarray(ref["distance"])[hit], atol=tol)
    # off-axis the two differ by far more than the tolerance, so the test tells them apart
    assert np.max(np.asarray(ref["distance"] - ref["depth"])[hit]) > 5 * tol


def _lit_rays(h=7, w=9):
    K = intrinsics_from_fov(40.0, h, w)
    pose = look_at((0.5, 0.4, 1.7), (0.0, 0.0, 0.0), up=(0.0, 1.0, 0.0))
    from kernels.camera import camera_rays

    o, d = (a.reshape(-1, 3) for a in camera_rays(pose, K, h, w))
    return o, d, jnp.asarray(pose)[2, :3]


def test_traced_shading_equals_static_shading_and_compiles_once():
    """shading as a traced index (one lax.switch, one compiled program for all four modes) gives the
    same images as the static names; a static non-albedo mode evaluates the field ONCE (the sample and
    its six probes together, 7 N points), static albedo once on N points."""
    o, d, axis = _lit_rays()
    light = jnp.array([0.3, 0.8, 0.52]) / jnp.linalg.norm(jnp.array([0.3, 0.8, 0.52]))
    kw = dict(num_samples=32, jitter=False, light_dir=light, ambient=0.25, optical_axis=axis, bg=jnp.ones(3))
    traces = []

    @jax.jit
    def traced(mode):
        traces.append(1)
        return render.render_rays(gauss_field, None, o, d, jnp.zeros(o.shape[0]), None, shading=mode, **kw)

    for i, name in enumerate(render.SHADING_MODES):
        a = traced(jnp.int32(i))
        b = render.render_rays(gauss_field, None, o, d, jnp.zeros(o.shape[0]), None, shading=name, **kw)
        for k in ("rgb", "depth", "opacity", "normal_image"):
            np.testing.assert_allclose(np.asarray(a[k]), np.asarray(b[k]), atol=1e-6, err_msg=(name, k))
    assert len(traces) == 1
    # the four modes differ (the switch really selects)
    rgbs = [np.asarray(traced(jnp.int32(i))["rgb"]) for i in range(4)]
    assert min(np.abs(rgbs[i] - rgbs[j]).max() for i in range(4) for j in range(i)) > 1e-2

    calls = []

    def counting(params, x, t, level_mask=None):
        calls.append(x.shape[0])
        return gauss_field(params, x, t, level_mask)

    n = o.shape[0] * 32
    render.render_rays(counting, None, o, d, jnp.zeros(o.shape[0]), None, shading="lambertian", **kw)
    assert calls == [7 * n]
    calls.clear()
    render.render_rays(counting, None, o, d, jnp.zeros(o.shape[0]), None, shading="albedo", **kw)
    assert calls == [n]


def _tiny_field(seed=0):
    from configs.four_d import get_config
    from four_d.field import field_from_config

    model = field_from_config(get_config("tiny"))
    params = model.init(jax.random.PRNGKey(seed), jnp.zeros((1, 3)), jnp.zeros((1,)))["params"]
    # non-trivial tables so gradients reach every part
    params = jax.tree.map(lambda a: a + 0.3 * jax.random.normal(jax.random.PRNGKey(seed + 1), a.shape), params)
    return render.make_field_apply(model), params


@pytest.mark.parametrize("jitter", [False, True])
def test_chunked_remat_render_equals_unchunked(jitter):
    """render_rays_chunked (63 rays, chunks of 16: padding exercised) with and without jax.checkpoint
    gives the same outputs (1e-6) and parameter gradients (1e-5 of the largest) as without; both equal
    one render_rays call (1e-5; gradients 1e-3 of the largest: another summation order, amplified by
    the finite-difference normals), with jitter too: a ray's draws depend on (key, its index) only, so
    the chunk size is a memory setting that does not change the render."""
    field_apply, params = _tiny_field()
    o, d, axis = _lit_rays()
    r = o.shape[0]
    t = jnp.linspace(0.0, 1.0, r)
    light = jnp.array([0.0, 0.6, 0.8])
    kw = dict(num_samples=16, jitter=jitter, shading="lambertian", ambient=0.3, light_dir=light,
              optical_axis=axis, bg=jnp.array([0.2, 0.5, 0.9]))
    key = jax.random.PRNGKey(4)
    cot = jax.random.normal(jax.random.PRNGKey(5), (r, 3))

    def loss_of(out):
        return jnp.sum(out["rgb"] * cot) + jnp.sum(out["depth"]) + jnp.sum(out["orient_sum"])

    def chunked(p, remat):
        return render.render_rays_chunked(field_apply, p, o, d, t, key, chunk=16, remat=remat, **kw)

    outs, grads = {}, {}
    for remat in (False, True):
        outs[remat], grads[remat] = jax.jit(lambda p, remat=remat: (
            chunked(p, remat), jax.grad(lambda q: loss_of(chunked(q, remat)))(p)))(params)
    for k in render.TRAIN_KEYS:
        np.testing.assert_allclose(np.asarray(outs[True][k]), np.asarray(outs[False][k]), atol=1e-6, err_msg=k)
    for a, b in zip(jax.tree.leaves(grads[True]), jax.tree.leaves(grads[False])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5 * np.abs(np.asarray(b)).max() + 1e-12)
    one = lambda p: render.render_rays(field_apply, p, o, d, t, key, **kw)
    full, g_full = jax.jit(lambda p: (one(p), jax.grad(lambda q: loss_of(one(q)))(p)))(params)
    for k in render.TRAIN_KEYS:
        np.testing.assert_allclose(np.asarray(outs[True][k]), np.asarray(full[k]), atol=1e-5, err_msg=k)
    for a, b in zip(jax.tree.leaves(grads[True]), jax.tree.leaves(g_full)):
        # summation order differs (one scatter-add of all samples vs one per chunk) and the
        # finite-difference normals amplify float32 rounding by 1 / eps = 100: 1e-3 of the largest
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-3 * np.abs(np.asarray(b)).max())
    if jitter:  # the draws are really jittered: another key moves the samples
        other = jax.jit(lambda p: render.render_rays(field_apply, p, o, d, t, jax.random.PRNGKey(6), **kw))(params)
        assert float(jnp.max(jnp.abs(other["distance"] - full["distance"]))) > 1e-3
    assert float(jnp.max(outs[True]["opacity"])) > 0.5


def test_remat_memory_is_bounded_by_the_chunk():
    """XLA's memory analysis of the compiled gradient (no run): with jax.checkpoint the temporaries stay
    ~constant as the batch grows 4x at a fixed chunk, without it they grow ~4x."""
    field_apply, params = _tiny_field()
    kw = dict(num_samples=16, jitter=False, shading="lambertian", ambient=0.3, light_dir=jnp.array([0.0, 0.6, 0.8]))

    def temp_bytes(r, remat):
        o = jnp.zeros((r, 3)).at[:, 2].set(2.0)
        d = jnp.zeros((r, 3)).at[:, 2].set(-1.0)

        def loss(p):
            out = render.render_rays_chunked(field_apply, p, o, d, jnp.zeros(r), None, chunk=128, remat=remat, **kw)
            return jnp.sum(out["rgb"])

        return jax.jit(jax.grad(loss)).lower(params).compile().memory_analysis().temp_size_in_bytes

    small, big = temp_bytes(512, True), temp_bytes(2048, True)
    small_nr, big_nr = temp_bytes(512, False), temp_bytes(2048, False)
    assert big < 1.5 * small, (small, big)
    assert big_nr > 3 * small_nr and big_nr > 3 * big, (small_nr, big_nr, big)


def test_image_renderer_is_cached_across_calls():
    """render_image with the same sizes and static settings reuses one compiled program; other traced
    values (background, time, pose) do not re-trace it."""
    traces = []

    def counting(params, x, t, level_mask=None):
        traces.append(1)
        return gauss_field(params, x, t, level_mask)

    h = w = 6
    K = intrinsics_from_fov(40.0, h, w)
    kw = dict(num_samples=8, chunk=12)
    a = render.render_image(counting, None, look_at((0.0, 0.0, 1.8), (0, 0, 0), up=(0.0, 1.0, 0.0)), K, h, w, 0.1,
                            bg=jnp.ones(3), **kw)
    n = len(traces)
    b = render.render_image(counting, None, look_at((0.5, 0.2, 1.7), (0, 0, 0), up=(0.0, 1.0, 0.0)), K, h, w, 0.7,
                            bg=jnp.zeros(3), **kw)
    assert len(traces) == n > 0
    assert np.abs(np.asarray(a["rgb"]) - np.asarray(b["rgb"])).max() > 0.1
    render.render_image(counting, None, jnp.eye(4), K, h, w, 0.1, bg=jnp.ones(3), num_samples=9, chunk=12)
    assert len(traces) > n  # a different static setting compiles another program


def test_occupancy_static_to_dynamic_transfer_and_per_bin_refresh():
    """The static grid is copied into every time bin (official from_pretrained_3d); the next refresh
    evaluates bin k at times in [k / B, (k + 1) / B) (the official 0.5 `times` side effect is not
    reproduced): a ball moving along x lights up a different cell in every bin."""
    static = _occupancy_for_two_balls(res=16, bins=1, updates=2)
    dyn = render.occupancy_static_to_dynamic(static, 4)
    assert dyn.shape == (4, 16, 16, 16)
    for k in range(4):
        np.testing.assert_array_equal(np.asarray(dyn[k]), np.asarray(static[0]))
    np.testing.assert_array_equal(np.asarray(render.occupancy_mask(dyn)), np.broadcast_to(
        np.asarray(render.occupancy_mask(static)), (4, 16, 16, 16)))
    with pytest.raises(ValueError, match="static density grid"):
        render.occupancy_static_to_dynamic(dyn, 4)

    def moving(x, t):  # a ball of radius 0.15 at x = -0.6 + 1.2 t
        c = jnp.stack([-0.6 + 1.2 * t, 0 * t, 0 * t], -1)
        return jnp.where(jnp.sum((x - c) ** 2, -1) < 0.15**2, 50.0, 0.0)

    grid = render.update_occupancy(jnp.zeros((4, 16, 16, 16)), moving, jax.random.key(0), decay=0.95, chunk=4096)
    centres = np.asarray(render.occupancy_cell_centers(16)).reshape(16, 16, 16, 3)
    for k in range(4):
        occ = np.asarray(grid[k]) > 0
        x_mean = centres[occ][:, 0].mean()
        np.testing.assert_allclose(x_mean, -0.6 + 1.2 * (k + 0.5) / 4, atol=0.1)


def test_normals_and_lambertian_shading_vs_analytic():
    """Gaussian density (radial normals n = x/|x|): normal image and headlight shading vs NumPy."""

    def gauss(params, x, t, level_mask=None):
        s = 30.0 * jnp.exp(-jnp.sum(x * x, -1) / (2 * 0.3**2))
        return {"sigma": s, "albedo": jnp.broadcast_to(COLOR, x.shape)}

    o = jnp.array([[0.0, 0.0, 3.0], [0.2, 0.1, 3.0], [-0.3, 0.25, 3.0]])
    d = jnp.tile(jnp.array([[0.0, 0.0, -1.0]]), (3, 1))
    amb = 0.3
    out = render.render_rays(gauss, None, o, d, jnp.zeros(3), None, num_samples=256, jitter=False,
                             shading="lambertian", ambient=amb, bg=jnp.zeros(3))
    x = np.asarray(o)[:, None] + np.asarray(d)[:, None] * np.asarray(out["t_mid"])[..., None]
    n = x / np.linalg.norm(x, axis=-1, keepdims=True)
    w = np.asarray(out["weights"])
    np.testing.assert_allclose(out["normal_image"], np.einsum("rs,rsc->rc", w, (n + 1) / 2), atol=2e-3)
    lam = amb + (1 - amb) * np.maximum(0.0, np.sum(n * -np.asarray(d)[:, None], -1))
    np.testing.assert_allclose(out["rgb"], np.einsum("rs,rsc->rc", w, lam[..., None] * np.asarray(COLOR)), atol=2e-3)
    assert float(out["opacity"][0]) > 0.99
