"""Camera and time sampling for image-to-4D (Animate124 `nerf/provider.py`, `dnerf/provider.py`).

World frame: y UP, as in the official code; the object sits at the origin. Spherical coordinates
are the official ones:

    eye = r * (sin(polar) sin(azimuth), cos(polar), sin(polar) cos(azimuth))

polar is measured from +y (0 = straight above, 90 = the horizon), azimuth from +z towards +x, both in
degrees. The reference view (polar 90, azimuth 0, radius 1.8) sits on the +z axis looking down -z.

Poses are world-to-camera 4x4 in the OpenCV convention (kernels/camera.py: x right, y down, z forward,
proper rotations that agree with cv2.projectPoints), built with kernels.camera.look_at(eye, origin,
up=+y). In our images world +x is to the RIGHT of the reference view and world +y up.

Handedness against the official code (tested in tests/test_cameras.py from the official formulas).
The official camera-to-world rotation for (polar, azimuth) is [right, up, forward] with forward =
normalize(eye), right = normalize(forward x (0, 1, 0)), up = right x forward, and its rays are
d = R ((i + 0.5 - cx) / f, -(j + 0.5 - cy) / f, -1). That rotation has determinant -1: `right` is
world -x at the reference view, so the official image of a scene is the LEFT-RIGHT MIRROR of a
physical camera's image. Ours, at the same eye, is exactly R_ours = -R_official (a proper rotation),
and pixel (row v, column u) of ours sees what official pixel (v, W - 1 - u) sees. Equivalently, with
M = diag(-1, 1, 1):

    official image of scene S from (polar, azimuth, r)  ==  our image of M S from (polar, -azimuth, r).

Given the same reference image, the scene we reconstruct is therefore the x-mirror of the official
one, and our camera at azimuth a renders what the official camera at -a renders. Everything that is
symmetric in the azimuth (camera distributions, dynamic camera deltas, the front/side/back prompt
blend on |azimuth|, the light normalize(rays_o + g)) is unaffected; the one asymmetric consumer is the
Zero-1-to-3 camera token, which therefore flips the sign of its sine term: see zero123_camera_token.

Every function takes an explicit jax.random key and is jit-able (sizes and rates are static).
"""

import jax
import jax.numpy as jnp
import numpy as np

from kernels.camera import intrinsics_from_fov, look_at

_UP = (0.0, 1.0, 0.0)  # official up_vector [0, 1, 0]


def spherical_to_cartesian(polar, azimuth, radius):
    """Camera centres [..., 3] from polar/azimuth (degrees, broadcastable) and radius.

    Official nerf/provider.py circle_poses/rand_poses: (r sin p sin a, r cos p, r sin p cos a).
    """
    p = jnp.deg2rad(jnp.asarray(polar, jnp.float32))
    a = jnp.deg2rad(jnp.asarray(azimuth, jnp.float32))
    r = jnp.asarray(radius, jnp.float32)
    return jnp.stack([r * jnp.sin(p) * jnp.sin(a), r * jnp.cos(p), r * jnp.sin(p) * jnp.cos(a)], axis=-1)


def cartesian_to_spherical(xyz):
    """(polar [...], azimuth [...], radius [...]) in degrees of points xyz [..., 3].

    polar in [0, 180] (acos of y / r, as the official uniform-sphere branch), azimuth =
    atan2(x, z) in (-180, 180].
    """
    xyz = jnp.asarray(xyz, jnp.float32)
    radius = jnp.linalg.norm(xyz, axis=-1)
    cos_p = jnp.clip(xyz[..., 1] / jnp.maximum(radius, 1e-12), -1.0, 1.0)
    polar = jnp.rad2deg(jnp.arccos(cos_p))
    azimuth = jnp.rad2deg(jnp.arctan2(xyz[..., 0], xyz[..., 2]))
    return polar, azimuth, radius


def wrap_degrees(angle):
    """Angle(s) in degrees wrapped to [-180, 180)."""
    return jnp.mod(angle + 180.0, 360.0) - 180.0


def pose_from_spherical(polar, azimuth, radius):
    """World-to-camera poses [..., 4, 4] of cameras at (polar, azimuth, radius) looking at the origin."""
    eye = spherical_to_cartesian(polar, azimuth, radius)
    flat = eye.reshape(-1, 3)
    poses = jax.vmap(lambda e: look_at(e, jnp.zeros(3, jnp.float32), up=_UP))(flat)
    return poses.reshape(eye.shape[:-1] + (4, 4))


def zero123_camera_token(polar, azimuth, radius, ref_polar=90.0, ref_azimuth=0.0, ref_radius=1.8):
    """The Zero-1-to-3 camera token [..., 4] of a novel view relative to the reference view.

    token = [radians(polar - ref_polar), sin(radians(da)), cos(radians(da)), radius - ref_radius],
    da = azimuth - ref_azimuth, all angles in degrees in OUR convention (module docstring); inputs
    broadcast. The official code (guidance/zero123_diffusers_utils.py, train_step) builds
    [radians(dp), sin(radians(-da_off)), cos(radians(da_off)), dr] from ITS deltas. Derivation of the
    sign: our reference image and novel image are the official images of the mirrored scene taken by
    the official cameras at (ref_polar, -ref_azimuth) and (polar, -azimuth) (same polars and radii),
    so da_off = -azimuth - (-ref_azimuth) = -da and the official token for that same image pair is
    [radians(dp), sin(radians(da)), cos(radians(da)), dr]. The official wrap of da to [-180, 180]
    does not change sin/cos. (The official dnerf/provider.py deltas are taken against the default
    view, which is the reference view in Animate124.)
    """
    dp = jnp.asarray(polar, jnp.float32) - jnp.asarray(ref_polar, jnp.float32)
    da = jnp.deg2rad(jnp.asarray(azimuth, jnp.float32) - jnp.asarray(ref_azimuth, jnp.float32))
    dr = jnp.asarray(radius, jnp.float32) - jnp.asarray(ref_radius, jnp.float32)
    dp, da, dr = jnp.broadcast_arrays(dp, da, dr)
    return jnp.stack([jnp.deg2rad(dp), jnp.sin(da), jnp.cos(da), dr], axis=-1)


def _check_size(size, fovy, where):
    if int(size) != size or size <= 0:
        raise ValueError(f"four_d/cameras.py {where}: size must be a positive integer, got {size!r}")
    if not 0.0 < fovy < 180.0:
        raise ValueError(f"four_d/cameras.py {where}: fovy must be in (0, 180) degrees, got {fovy!r}")


def _camera_dict(polar, azimuth, radius, fovy, size):
    polar = jnp.asarray(polar, jnp.float32)
    azimuth = jnp.asarray(azimuth, jnp.float32)
    radius = jnp.broadcast_to(jnp.asarray(radius, jnp.float32), polar.shape)
    return dict(
        poses=pose_from_spherical(polar, azimuth, radius),
        K=intrinsics_from_fov(fovy, size, size),
        polar=polar,
        azimuth=wrap_degrees(azimuth),
        radius=radius,
        eye=spherical_to_cartesian(polar, azimuth, radius),
    )


def reference_camera(radius=1.8, fovy=40.0, size=128, polar=90.0, azimuth=0.0):
    """The reference (input-image) view: official default_polar 90, default_azimuth 0, radius 1.8, fovy 40.

    Returns dict(poses [4, 4], K [3, 3], polar [], azimuth [], radius [], eye [3]) for a size x size image.
    """
    _check_size(size, fovy, "reference_camera")
    return _camera_dict(polar, azimuth, radius, fovy, size)


def _sample_start_angles(key, n, polar_range, azimuth_range, uniform_sphere_rate, hemisphere):
    """Official rand_poses angle draw; returns (polar [n], azimuth [n]) in degrees."""
    k_branch, k_p, k_a, k_cube = jax.random.split(key, 4)
    polar_box = jax.random.uniform(k_p, (n,), minval=polar_range[0], maxval=polar_range[1])
    azimuth_box = jax.random.uniform(k_a, (n,), minval=azimuth_range[0], maxval=azimuth_range[1])
    if hemisphere == "official":
        # Official "uniform sphere": normalize(U[-1,1], U[0,1], U[-1,1]) -- a normalised cube sample, so
        # not exactly uniform on the hemisphere, but always in the upper half (y >= 0).
        u = jax.random.uniform(k_cube, (n, 3))
        v = jnp.stack([2.0 * u[:, 0] - 1.0, u[:, 1], 2.0 * u[:, 2] - 1.0], axis=-1)
    elif hemisphere == "uniform":
        g = jax.random.normal(k_cube, (n, 3))
        v = g.at[:, 1].set(jnp.abs(g[:, 1]))  # isotropic Gaussian folded to y >= 0: uniform hemisphere
    else:
        raise ValueError(f"four_d/cameras.py: hemisphere must be 'official' or 'uniform', got {hemisphere!r}")
    polar_sph, azimuth_sph, _ = cartesian_to_spherical(v)
    on_sphere = jax.random.uniform(k_branch, (n,)) < uniform_sphere_rate
    return jnp.where(on_sphere, polar_sph, polar_box), jnp.where(on_sphere, azimuth_sph, azimuth_box)


def random_cameras(
    key,
    n,
    radius=1.8,
    fovy=40.0,
    size=128,
    polar_range=(45.0, 135.0),
    azimuth_range=(-180.0, 180.0),
    uniform_sphere_rate=0.5,
    hemisphere="official",
):
    """n random training cameras looking at the origin (official rand_poses, Animate124 flags).

    With probability uniform_sphere_rate a camera lies on the upper hemisphere (polar <= 90; drawn as the
    official normalised cube sample, or a truly uniform one with hemisphere="uniform"); otherwise polar ~
    U[polar_range], azimuth ~ U[azimuth_range] (degrees). The official code draws the branch once per
    batch of 1; here every camera draws its own branch. Radius and fov are fixed (official ranges
    [1.8, 1.8], [40, 40]).

    Returns dict(poses [n, 4, 4], K [3, 3], polar [n], azimuth [n] in [-180, 180), radius [n], eye [n, 3]).
    """
    _check_size(size, fovy, "random_cameras")
    polar, azimuth = _sample_start_angles(key, n, polar_range, azimuth_range, uniform_sphere_rate, hemisphere)
    return _camera_dict(polar, azimuth, radius, fovy, size)


def dynamic_camera_trajectory(
    key,
    num_frames=16,
    radius=1.8,
    fovy=40.0,
    size=128,
    polar_range=(45.0, 135.0),
    azimuth_range=(-180.0, 180.0),
    uniform_sphere_rate=0.5,
    delta_polar=45.0,
    delta_azimuth=90.0,
    hemisphere="official",
):
    """A moving camera for one video clip (official dnerf/provider.py rand_poses_trajectory).

    The start (polar, azimuth) is drawn as in random_cameras; dp ~ U[-delta_polar, delta_polar] and
    da ~ U[-delta_azimuth, delta_azimuth] (degrees) are applied linearly, angle_f = angle + (f / F) * d
    for f = 0..F-1 (so the last frame stops one step short of the full delta), radius constant.

    Returns dict(poses [F, 4, 4], K [3, 3], polar [F], azimuth [F], radius [F], eye [F, 3]).
    """
    _check_size(size, fovy, "dynamic_camera_trajectory")
    k_start, k_dp, k_da = jax.random.split(key, 3)
    polar0, azimuth0 = _sample_start_angles(
        k_start, 1, polar_range, azimuth_range, uniform_sphere_rate, hemisphere
    )
    dp = jax.random.uniform(k_dp, (), minval=-delta_polar, maxval=delta_polar)
    da = jax.random.uniform(k_da, (), minval=-delta_azimuth, maxval=delta_azimuth)
    scale = jnp.arange(num_frames, dtype=jnp.float32) / num_frames
    return _camera_dict(polar0[0] + scale * dp, azimuth0[0] + scale * da, radius, fovy, size)


def orbit_cameras(n, polar=90.0, radius=1.8, fovy=40.0, size=128, azimuth_offset=0.0):
    """n test cameras on a circle: azimuth_k = 360 k / n + offset at fixed polar (official test orbit).

    Returns dict(poses [n, 4, 4], K [3, 3], polar [n], azimuth [n], radius [n], eye [n, 3]).
    """
    _check_size(size, fovy, "orbit_cameras")
    azimuth = jnp.arange(n, dtype=jnp.float32) * (360.0 / n) + azimuth_offset
    return _camera_dict(jnp.full((n,), polar, jnp.float32), azimuth, radius, fovy, size)


# ------------------------------------------------------------------------------------------------------
# Temporal balanced sampling (paper sec. 3.3; official dnerf/provider.py DNeRFDataset.collate)
# ------------------------------------------------------------------------------------------------------


def _check_time_args(precision, num_frames, zero_rate, mirror_rate):
    if num_frames <= 0 or precision < num_frames:
        raise ValueError(
            f"four_d/cameras.py temporal sampling: need 0 < num_frames <= precision, got "
            f"num_frames={num_frames}, precision={precision}"
        )
    for name, r in (("zero_rate", zero_rate), ("mirror_rate", mirror_rate)):
        if not 0.0 <= r <= 1.0:
            raise ValueError(f"four_d/cameras.py temporal sampling: {name} must be in [0, 1], got {r}")


def temporal_balanced_sampling(key, precision=256, num_frames=16, zero_rate=0.2, mirror_rate=0.5):
    """The F frame times of one training clip (official temporal sampling, animate124.md section 4).

    v ~ U{F..P}; window L = floor(v / F) * F; stride s = L / F; start = 0 with probability zero_rate,
    else start ~ U{0..P - L}; t_k = (start + k s) / P. With probability mirror_rate the clip is mirrored
    (t -> 1 - t, order reversed so times stay increasing) and is then no longer "from zero".

    Returns dict(times [F] float32 increasing in [0, 1], stride [] int32, start [] int32 (before any
    mirroring), from_zero [] bool (official start_from_zero: the zero_rate branch and not mirrored; gates
    the first-frame losses), mirrored [] bool).
    """
    _check_time_args(precision, num_frames, zero_rate, mirror_rate)
    k_v, k_zero, k_start, k_mirror = jax.random.split(key, 4)
    v = jax.random.randint(k_v, (), num_frames, precision + 1)
    window = (v // num_frames) * num_frames
    stride = window // num_frames
    zero_branch = jax.random.uniform(k_zero) < zero_rate
    start_free = jax.random.randint(k_start, (), 0, precision - window + 1)
    start = jnp.where(zero_branch, 0, start_free)
    ticks = start + jnp.arange(num_frames, dtype=jnp.int32) * stride
    mirrored = jax.random.uniform(k_mirror) < mirror_rate
    ticks = jnp.where(mirrored, precision - ticks[::-1], ticks)
    return dict(
        times=ticks.astype(jnp.float32) / precision,
        stride=stride.astype(jnp.int32),
        start=start.astype(jnp.int32),
        from_zero=jnp.logical_and(zero_branch, jnp.logical_not(mirrored)),
        mirrored=mirrored,
    )


def temporal_balanced_sampling_batch(
    key, batch, precision=256, num_frames=16, zero_rate=0.2, mirror_rate=0.5
):
    """`batch` independent clips (vmap over split keys); every output gains a leading [batch] axis."""
    keys = jax.random.split(key, batch)
    fn = lambda k: temporal_balanced_sampling(k, precision, num_frames, zero_rate, mirror_rate)
    return jax.vmap(fn)(keys)


def temporal_sampling_distribution(precision=256, num_frames=16, zero_rate=0.2, mirror_rate=0.5):
    """Exact probabilities of temporal_balanced_sampling, enumerated from its definition (NumPy, float64).

    Returns dict(
      strides [S] int (1..P // F), stride_probs [S]  (P = 256, F = 16: 16/241 each for 1..15, 1/241 for 16),
      p_touch_zero  P(some frame time == 0)  = (1 - mirror) * sum_L P(L) P(start = 0 | L),
      p_touch_one   P(some frame time == 1)  = mirror * sum_L P(L) P(start = 0 | L),
      p_from_zero   P(from_zero flag)        = (1 - mirror) * zero_rate,
      time_visits [P + 1]  expected number of frames landing on t = j / P per clip (sums to F)).
    P(start = 0 | L) = zero_rate + (1 - zero_rate) / (P - L + 1). Unmirrored clips never reach t = 1
    (the last frame is at most (P - s) / P) and mirrored ones never reach t = 0.
    """
    _check_time_args(precision, num_frames, zero_rate, mirror_rate)
    p_, f_ = int(precision), int(num_frames)
    v = np.arange(f_, p_ + 1)
    p_v = 1.0 / v.size
    strides = np.arange(1, p_ // f_ + 1)
    stride_of_v = v // f_
    stride_probs = np.array([np.sum(stride_of_v == s) * p_v for s in strides])
    p_start0 = 0.0
    visits = np.zeros(p_ + 1)
    for s, ps in zip(strides, stride_probs, strict=True):
        window = s * f_
        n_start = p_ - window + 1
        start_probs = np.full(n_start, (1.0 - zero_rate) / n_start)
        start_probs[0] += zero_rate
        p_start0 += ps * start_probs[0]
        ticks = np.arange(n_start)[:, None] + s * np.arange(f_)[None, :]  # [starts, F]
        forward = np.zeros(p_ + 1)
        np.add.at(forward, ticks.ravel(), np.repeat(start_probs, f_))
        visits += ps * ((1.0 - mirror_rate) * forward + mirror_rate * forward[::-1])
    return dict(
        strides=strides,
        stride_probs=stride_probs,
        p_touch_zero=(1.0 - mirror_rate) * p_start0,
        p_touch_one=mirror_rate * p_start0,
        p_from_zero=(1.0 - mirror_rate) * zero_rate,
        time_visits=visits,
    )
