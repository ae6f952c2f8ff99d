"""Oracle priors: diffusion "models" whose noise prediction is the exact denoiser of a known 4D target.

For a target latent z* (the analytic scene rendered from the requested camera and time, then encoded),
the exact noise prediction of a noisy latent z_t = sqrt(a) z + sqrt(1 - a) eps is

    eps_hat(z_t, t) = (z_t - sqrt(a) z*) / sqrt(1 - a)              (a = alpha_bar_t)

so eps_hat - eps = sqrt(a / (1 - a)) (z - z*) and the SDS gradient w(t) (eps_hat - eps) with w = 1 - a is
sqrt(a (1 - a)) (z - z*): it points every render at the exact render of the target. Everything else is the
real chain: four_d/priors/sds.py draws t and the noise, forms z_t, applies CFG (cond = the oracle,
uncond = the exact denoiser of a fixed grey image), the weighting, the clamp and the MSE-target loss.
With the official CFG form eps_c + s (eps_c - eps_u) the fixed point of the guided gradient is
z* + s (z* - z_grey) (SDS's over-saturation), so the known-answer runs use s = 0 (the default here).

Latents: "image" (z = 2 x - 1, NCHW, i.e. no VAE) or "linear_vae" (a fixed random 1x1 projection
3 -> 4 channels followed by a 2x2 average pool: a linear, lossy encoder like SD's 8x VAE but exact).
Images are resized to `size` with four_d.priors.common.resize_bilinear (as the real priors do) and the
target is rendered analytically at that size.

The oracles follow the stage contract (four_d/stages.py docstring) and declare `needs_view = True`: they
also receive view=dict(polar, azimuth, radius, times, background) of their inputs. What each takes from
where: "sd" its camera azimuth from its input (relative to the reference) and polar / radius from the view;
"zero123" its camera from its inputs, through four_d.cameras.zero123_camera_token and back (time 0);
"video" / "controlnet" the per-frame cameras and times from the view. The background of every target is
the view's background (the colour the stage composited the render on). Target cameras are built here from
the official spherical formula with kernels.camera.look_at, not with four_d.cameras (independent of the
stage's camera code).
"""

import jax
import jax.numpy as jnp
import numpy as np

from four_d import scenes
from four_d.cameras import zero123_camera_token
from four_d.priors import common, sds
from kernels.camera import intrinsics_from_fov, look_at

KINDS = ("sd", "zero123", "video", "controlnet")
LATENTS = ("image", "linear_vae")


def sd_alphas_cumprod(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012):
    """Stable Diffusion's scaled_linear schedule: betas = linspace(sqrt(b0), sqrt(b1), N)^2, cumprod(1 - b)."""
    betas = np.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=np.float64) ** 2
    return np.cumprod(1.0 - betas).astype(np.float32)


def oracle_pose(polar, azimuth, radius):
    """World-to-camera pose [4, 4] at the official spherical coordinates (degrees), looking at the origin."""
    p, a = jnp.deg2rad(polar), jnp.deg2rad(azimuth)
    eye = radius * jnp.stack([jnp.sin(p) * jnp.sin(a), jnp.cos(p), jnp.sin(p) * jnp.cos(a)])
    return look_at(eye, jnp.zeros(3), up=(0.0, 1.0, 0.0))


def render_target(scene, polar, azimuth, radius, t, background, size, fovy=40.0):
    """The exact target image [size, size, 3] of `scene` at (polar, azimuth, radius, t) over `background`."""
    pose = oracle_pose(polar, azimuth, radius)
    out = scenes.render(scene, pose, intrinsics_from_fov(fovy, size, size), size, size, t)
    a = out["alpha"][..., None]
    return out["rgb"] * a + jnp.asarray(background, jnp.float32) * (1.0 - a)


def encode(params, images, latent):
    """Latents of images [N, H, W, 3] in [0, 1]: "image" [N, 3, H, W] = 2x - 1; "linear_vae" [N, 4, H/2, W/2]."""
    x = 2.0 * images - 1.0
    if latent == "linear_vae":
        x = jnp.einsum("nhwc,cd->nhwd", x, params["projection"])
        n, h, w, c = x.shape
        x = x.reshape(n, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))
    return jnp.moveaxis(x, -1, 1)


def make_oracle_prior(kind, scene, *, latent="image", size=None, t_range=(0.2, 0.6), guidance_scale=0.0,
                      cfg_form="official", weighting="sds", grad_clip=-1.0, fovy=40.0, ref_polar=90.0,
                      ref_azimuth=0.0, ref_radius=1.8, seed=0):
    """A Prior (params, fn) of the stage contract for `kind` whose target is the analytic `scene`.

    size: the prior's working resolution (None: the input's). t_range: fractions of the 1000 SD timesteps
    (official sd / zero123 0.2-0.6, video 0.02-0.98, ControlNet 0.2-0.8). guidance_scale / cfg_form /
    weighting / grad_clip: as four_d.priors.sds.score_distillation (s = 0: the exact denoiser's gradient).
    The reference camera (ref_*) is the one zero123 tokens are relative to.
    """
    if kind not in KINDS:
        raise ValueError(f"four_d/oracle.py: kind must be one of {KINDS}, got {kind!r}")
    if latent not in LATENTS:
        raise ValueError(f"four_d/oracle.py: latent must be one of {LATENTS}, got {latent!r}")
    if size is not None and (int(size) != size or size < 2 or (latent == "linear_vae" and size % 2)):
        raise ValueError(f"four_d/oracle.py: size must be an integer >= 2 (even for linear_vae), got {size!r}")
    alphas = sd_alphas_cumprod()
    lo, hi = sds.step_range(t_range, alphas.shape[0])
    rng = np.random.default_rng(seed)
    params = {"alphas_cumprod": jnp.asarray(alphas),
              "projection": jnp.asarray(rng.normal(size=(3, 4)) / np.sqrt(3.0), jnp.float32)}

    def targets(polar, azimuth, radius, times, background, n_size):
        """Target images [N, n_size, n_size, 3] of flat camera/time arrays [N] and backgrounds [N, 3]."""
        return jax.vmap(lambda p, a, r, t, b: render_target(scene, p, a, r, t, b, n_size, fovy))(
            polar, azimuth, radius, times, background)

    def distill(prm, key, images, target_images, batch):
        """SDS of images [N, H, W, 3] against targets [N, H, W, 3]; leading N = batch x frames."""
        z = encode(prm, images, latent)
        z_star = encode(prm, target_images, latent)
        z_grey = encode(prm, jnp.full_like(target_images, 0.5), latent)
        n = z.shape[0]
        frames = n // batch
        # one t and the noise per clip (video) / image: latents [B, C, F, h, w] as the video prior
        to_clip = lambda a: jnp.moveaxis(a.reshape((batch, frames) + a.shape[1:]), 1, 2)
        z, z_star, z_grey = to_clip(z), to_clip(z_star), to_clip(z_grey)
        k_t, k_n = jax.random.split(key)
        t = sds.sample_timesteps(k_t, (batch,), lo, hi)
        noise = jax.random.normal(k_n, z.shape, jnp.float32)

        def predict(noisy, tt):
            a = sds._per_entry(sds.gather_alphas(prm["alphas_cumprod"], tt), noisy)
            exact = lambda target: (noisy - jnp.sqrt(a) * target) / jnp.sqrt(1.0 - a)
            return exact(z_grey), exact(z_star)

        return sds.score_distillation(z, noise, t, prm["alphas_cumprod"], predict, guidance_scale=guidance_scale,
                                      cfg_form=cfg_form, weighting_strategy=weighting, grad_clip=grad_clip,
                                      loss_target="mse", loss_reduction="sum")

    def prepare(images):
        common.check_images(images, f"four_d/oracle.py {kind}")
        s = images.shape[1] if size is None else int(size)
        return common.resize_bilinear(images.astype(jnp.float32), s), s

    if kind == "sd":
        def fn(prm, key, images, azimuth_deg, *, view):
            x, s = prepare(images)
            az = jnp.asarray(azimuth_deg, jnp.float32) + ref_azimuth  # the input's (relative) azimuth
            tgt = targets(view["polar"], az, view["radius"], jnp.zeros_like(az), view["background"], s)
            return distill(prm, key, x, tgt, x.shape[0])
    elif kind == "zero123":
        def fn(prm, key, images, polar_deg, azimuth_deg, radius, *, view):
            x, s = prepare(images)
            tok = zero123_camera_token(polar_deg, azimuth_deg, radius, ref_polar, ref_azimuth, ref_radius)
            # the camera back from the token (the real prior conditions on exactly this token)
            polar = ref_polar + jnp.rad2deg(tok[:, 0])
            az = ref_azimuth + jnp.rad2deg(jnp.arctan2(tok[:, 1], tok[:, 2]))
            r = ref_radius + tok[:, 3]
            tgt = targets(polar, az, r, jnp.zeros_like(az), view["background"], s)
            return distill(prm, key, x, tgt, x.shape[0])
    else:
        def fn(prm, key, clips, *rest, view):
            b, f = clips.shape[:2]
            x, s = prepare(clips.reshape((b * f,) + clips.shape[2:]))
            bg = jnp.repeat(view["background"], f, axis=0)
            tgt = targets(view["polar"].reshape(-1), view["azimuth"].reshape(-1), view["radius"].reshape(-1),
                          view["times"].reshape(-1), bg, s)
            return distill(prm, key, x, tgt, b)

    fn.needs_view = True
    fn.kind = kind
    return params, fn


def make_oracle_priors(scene, kinds=KINDS, **kw):
    """{kind: (params, fn)} oracle priors of the same scene; per-kind official t ranges unless given."""
    t_ranges = {"sd": (0.2, 0.6), "zero123": (0.2, 0.6), "video": (0.02, 0.98), "controlnet": (0.2, 0.8)}
    out = {}
    for kind in kinds:
        args = dict(kw)
        args.setdefault("t_range", t_ranges[kind])
        out[kind] = make_oracle_prior(kind, scene, **args)
    return out
