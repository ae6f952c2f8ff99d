"""Animate124's three stages: static -> coarse (dynamic) -> fine (semantic refinement), by score distillation.

Facts: ../shared/reference/animate124.md sections 2-5 (official HeliosZhao/Animate124 run-static.sh,
run-dynamic.sh, run-cn.sh, nerf/utils.py and dnerf/utils.py train_step). Every weight and schedule is a
key of configs/four_d.py `stages` (paper values as defaults, the official setting cited beside each).

The prior contract (what a stage sees of a diffusion prior; the real ones come from four_d/stage_priors.py,
the oracle ones from four_d/oracle.py):

    Prior = (params, fn)            # params: a pytree of frozen arrays passed into the jitted step as an
                                    # argument (never closed over); fn(params, key, *inputs) -> (loss, aux)
    # inputs per kind (images in [0, 1], float32, channels last):
    #  "sd":         fn(params, key, images[B,H,W,3], azimuth_deg[B])                  prompt bound in params
    #  "zero123":    fn(params, key, images[B,H,W,3], polar_deg[B], azimuth_deg[B], radius[B]) (ABSOLUTE
    #                camera of the render; the fn forms the token with four_d.cameras.zero123_camera_token
    #                against the reference camera)
    #  "video":      fn(params, key, clips[B,F,H,W,3], azimuth_deg[B])
    #  "controlnet": fn(params, key, frames[B,F,H,W,3], cond_frames[B,F,H,W,3], azimuth_deg[B])
    # a stage gets priors: dict kind -> Prior (missing kinds are simply not used; their loss weight must
    # then be 0)

Details of the contract as the stages use it:
  - `loss` is a scalar whose gradient w.r.t. the images is the prior's SDS gradient WITHOUT the stage's
    lambda: the stage multiplies it by stages.<stage>.lambda_<kind> (static lambda_sd 1, lambda_zero123 40;
    so a real prior's own lambda_guidance knob must be 1). Per-sample weights that belong to the prior stay
    inside it (zero123's angle / 180). `aux` is a dict of arrays; its scalar entries are logged.
  - "sd" and "video" azimuths are relative to the reference view (official data['azimuth'], 0 = front),
    wrapped to [-180, 180); "zero123" gets the absolute camera of the render. The video / controlnet
    azimuth is that of frame 0 of each clip.
  - Optional, for oracles only: a fn with attribute `needs_view = True` is also given the exact view of
    its inputs as a keyword `view=dict(polar, azimuth, radius, times, background)` (degrees, absolute;
    [B] for image kinds, [B, F] for clip kinds; background [B, 3], the colour behind the object in the
    images). The real priors never see it.

Stages and what they do (global step continued across stages: static [0, S), coarse [S, S + C), fine
[S + C, S + C + F)):
  - static: a T = 1 field; per step either a reference step (global step < known_iters or step %
    known_view_interval == 0) or an SDS step. Reference step: the reference view at known_view_scale x
    render_size, ray origins and directions + N(0, known_view_noise), white background, albedo shading,
    loss lambda_rgb MSE(rgb m, gt m) + lambda_mask MSE(opacity, m) + lambda_depth (1 - Pearson(depth,
    depth_ref | m)) / 2. SDS step: `batch` official random cameras (random_cameras), random background
    colour, official light normalize(o + g), shading 'normal' while step < normal_iter_ratio S, then
    textureless with probability textureless_rate else lambertian with ambient ~ U(ambient_range);
    lambda_sd SD-SDS + lambda_zero123 zero123-SDS. Regularisers (orientation, entropy, normal TV, normal
    vs blur) on every render.
  - coarse: params = grid4d.static_to_dynamic(static params) (+ occupancy_static_to_dynamic); clips of F
    frames with times from temporal_balanced_sampling and a dynamic camera (dynamic_camera_trajectory) with
    probability dynamic_cam_rate, else the trajectory's first camera held still; lambda_video video-SDS;
    lambda_zero123 zero123-SDS on frame 0 when the clip starts at t = 0 and is not mirrored; temporal TV
    reg.lambda_time_tv; gradient value clip grad_clip; reference steps at t = 0.
  - fine: as coarse, plus ControlNet-Tile SDS on cn_frames frames per clip chosen evenly ({0, F/2} for 2),
    conditioned on the render of a frozen copy of the coarse model (same rays, times, shading, background,
    light; kept in the state as "frozen" so a resume is exact).

Randomness: every draw of a step comes from fold_in(PRNGKey(seed), global step), so a resumed run replays
exactly the steps of an uninterrupted one (bit-identical on the same machine and device count).
"""

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from clitools.outputs import write_text
from four_d import cameras as cam_lib
from four_d import field as field_lib
from four_d import render as render_lib
from four_d import train_loop
from four_d.field import field_from_config
from four_d.grid4d import grid_spec_from_config, level_mask_for_step, static_to_dynamic, temporal_tv_loss
from kernels.camera import camera_rays, intrinsics_from_fov

STAGES = ("static", "coarse", "fine")
PRIOR_KINDS = ("sd", "zero123", "video", "controlnet")
# which prior kinds a stage uses, and the config key of each one's weight
STAGE_PRIORS = {
    "static": {"sd": "lambda_sd", "zero123": "lambda_zero123"},
    "coarse": {"video": "lambda_video", "zero123": "lambda_zero123"},
    "fine": {"video": "lambda_video", "zero123": "lambda_zero123", "controlnet": "lambda_controlnet"},
}
SHADING = {name: i for i, name in enumerate(field_lib.SHADING_MODES)}


# ------------------------------------------------------------------------------------------------
# schedule (pure functions of the global step; traced or Python ints)
# ------------------------------------------------------------------------------------------------


def stage_bounds(config):
    """{stage: (first global step, end global step)} with the global step continued across stages."""
    s = config.stages
    out, start = {}, 0
    for name in STAGES:
        n = int(s[name].iterations)
        out[name] = (start, start + n)
        start += n
    return out


def is_reference_step(config, step):
    """Official known-view schedule: global step < known_iters, or step % known_view_interval == 0."""
    s = config.stages
    first = jnp.asarray(step) < int(s.known_iters)
    every = int(s.known_view_interval)
    periodic = (jnp.asarray(step) % every == 0) if every > 0 else jnp.asarray(False)
    return jnp.logical_or(first, periodic)


def stage_level_mask(config, step):
    """Coarse-to-fine level mask [L] at a global step (grid4d.level_mask_for_step), None when disabled."""
    iters = int(config.stages.level_mask_iters)
    masked = int(config.field.grid_levels_mask)
    if iters <= 0 or masked <= 0:
        return None
    return level_mask_for_step(step, int(config.grid.num_levels), masked, iters)


def shading_schedule(config, stage, step, key):
    """(shading index, ambient) of an SDS render at a global step.

    static: 'normal' while step < normal_iter_ratio * static iterations (official --normal_iter_ratio
    0.2), then textureless with probability textureless_rate, else lambertian, ambient ~ U(ambient_range)
    (official). coarse / fine: no normal phase.
    """
    sc = config.stages[stage]
    if config.stages.albedo_only:
        return SHADING["albedo"], 1.0  # static: only the albedo branch is compiled
    lo, hi = (float(v) for v in config.stages.ambient_range)
    k_tex, k_amb = jax.random.split(key)
    ambient = jax.random.uniform(k_amb, (), minval=lo, maxval=hi)
    textureless = jax.random.uniform(k_tex, ()) < float(sc.textureless_rate)
    mode = jnp.where(textureless, SHADING["textureless"], SHADING["lambertian"])
    if stage == "static":
        normal_steps = int(round(float(sc.normal_iter_ratio) * int(sc.iterations)))
        mode = jnp.where(jnp.asarray(step) < normal_steps, SHADING["normal"], mode)
    return mode.astype(jnp.int32), ambient


def cn_frame_indices(num_frames, cn_frames):
    """The frames of a clip given to ControlNet: chosen evenly, floor(k F / n) (official {0, 8} of 16)."""
    if not 1 <= cn_frames <= num_frames:
        raise ValueError(f"four_d/stages.py: stages.fine.cn_frames must be in [1, {num_frames}] (the clip's "
                         f"frames), got {cn_frames}")
    return tuple(int(k * num_frames // cn_frames) for k in range(cn_frames))


# ------------------------------------------------------------------------------------------------
# losses
# ------------------------------------------------------------------------------------------------


def masked_pearson(a, b, mask, eps=1e-8):
    """Pearson correlation of a and b over the pixels where mask > 0.5 (static shapes: mask as weights)."""
    w = (jnp.asarray(mask, jnp.float32) > 0.5).astype(jnp.float32)
    w = w / jnp.maximum(jnp.sum(w), 1.0)
    ma, mb = jnp.sum(w * a), jnp.sum(w * b)
    da, db = a - ma, b - mb
    cov = jnp.sum(w * da * db)
    return cov / jnp.sqrt(jnp.sum(w * da * da) * jnp.sum(w * db * db) + eps)


def reference_losses(out, ref, config):
    """Weighted reference-view terms (official): lambda_rgb MSE(rgb m, gt m), lambda_mask MSE(opacity, m),
    lambda_depth (1 - Pearson(depth, ref depth | m)) / 2. out: render of the reference rays [N];
    ref: dict(rgb [N, 3], mask [N], depth [N]). Returns dict(rgb, mask, depth) weighted."""
    s = config.stages
    m = ref["mask"]
    rgb = jnp.mean((out["rgb"] * m[:, None] - ref["rgb"] * m[:, None]) ** 2)
    mask = jnp.mean((out["opacity"] - m) ** 2)
    depth = (1.0 - masked_pearson(out["depth"], ref["depth"], m)) / 2.0
    return {"ref_rgb": s.lambda_rgb * rgb, "ref_mask": s.lambda_mask * mask, "ref_depth": s.lambda_depth * depth}


def stage_regularisers(config):
    s = config.stages
    return {"lambda_orient": float(s.lambda_orient), "lambda_entropy": float(s.lambda_entropy),
            "lambda_normal_tv": float(s.lambda_normal_tv), "lambda_normal_smooth": float(s.lambda_normal_smooth)}


# ------------------------------------------------------------------------------------------------
# reference data
# ------------------------------------------------------------------------------------------------


def reference_size(config):
    return int(round(int(config.stages.render_size) * float(config.stages.known_view_scale)))


def prepare_reference(image_rgba, depth, config):
    """Host arrays of the reference view at known_view_scale x render_size: dict(rgb [N, 3] composited on
    white, mask [N], depth [N], size). image_rgba [H, W, 4] in [0, 1] (square), depth [H, W] (any affine
    scale: only its Pearson correlation is used)."""
    img = np.asarray(image_rgba, np.float32)
    dep = np.asarray(depth, np.float32)
    if img.ndim != 3 or img.shape[-1] != 4:
        raise ValueError(f"four_d/stages.py: image_rgba must be [H, W, 4] (RGBA), got shape {img.shape}")
    if img.shape[0] != img.shape[1]:
        raise ValueError(f"four_d/stages.py: image_rgba must be square (pad it first), got {img.shape[:2]}")
    if dep.shape != img.shape[:2]:
        raise ValueError(f"four_d/stages.py: depth must be [H, W] = {img.shape[:2]} like the image, got {dep.shape}")
    if not (np.all(np.isfinite(img)) and np.all(np.isfinite(dep))):
        raise ValueError("four_d/stages.py: image_rgba and depth must be finite")
    if img.min() < 0 or img.max() > 1:
        raise ValueError(f"four_d/stages.py: image_rgba values must be in [0, 1], got [{img.min()}, {img.max()}]")
    n = reference_size(config)
    r = np.asarray(jax.image.resize(jnp.asarray(img), (n, n, 4), "linear", antialias=True))
    d = np.asarray(jax.image.resize(jnp.asarray(dep), (n, n), "linear", antialias=True))
    alpha = np.clip(r[..., 3], 0.0, 1.0)
    mask = (alpha > 0.5).astype(np.float32)
    rgb = r[..., :3] * alpha[..., None] + (1.0 - alpha[..., None])  # white background (official)
    return {"rgb": rgb.reshape(-1, 3), "mask": mask.reshape(-1), "depth": d.reshape(-1).astype(np.float32),
            "size": n}


# ------------------------------------------------------------------------------------------------
# model, state, hand-over
# ------------------------------------------------------------------------------------------------


def stage_model(config, stage):
    """The field of a stage: T = 1 time grid in static, grid.time_grid_size in coarse / fine."""
    return field_from_config(config, num_time_grids=1 if stage == "static" else None)


def stage_optimizer(config, stage):
    return train_loop.make_optimizer(config.optim, grad_clip=float(config.stages[stage].grad_clip))


def occupancy_bins(config, stage):
    return 1 if stage == "static" else int(config.render.occupancy_time_bins)


def init_static_state(config):
    model = stage_model(config, "static")
    params = model.init(jax.random.PRNGKey(int(config.seed)), jnp.zeros((1, 3)), jnp.zeros((1,)))["params"]
    state = {"params": params, "opt_state": stage_optimizer(config, "static").init(params),
             "step": jnp.zeros((), jnp.int32)}
    if config.stages.use_occupancy:
        state["occupancy"] = render_lib.init_occupancy(int(config.render.occupancy_resolution), 1)
    return state


def hand_over(config, prev_state, stage):
    """The first state of `stage` from the last state of the stage before it.

    coarse <- static: params = static_to_dynamic (every [1, E, F] table copied into the T time grids; the
    MLP kept), occupancy copied into every time bin (render.occupancy_static_to_dynamic), a fresh optimiser
    (the parameter shapes change). fine <- coarse: params (and occupancy) carried on, a fresh optimiser (the
    official fine run, scripts/animate124/run-cn.sh, is a new Trainer that loads only the model's state dict from
    --cn_base: main.py `model.load_state_dict(sr_base_checkpoint['model'])`), and "frozen" = a copy of the coarse
    params (the ControlNet condition renderer). The global step carries on.
    """
    if stage == "coarse":
        params = static_to_dynamic(prev_state["params"], int(config.grid.time_grid_size))
        params = jax.tree.map(lambda a: jnp.array(a), params)
        new = {"params": params, "opt_state": stage_optimizer(config, "coarse").init(params),
               "step": jnp.asarray(prev_state["step"], jnp.int32)}
        if "occupancy" in prev_state:
            new["occupancy"] = render_lib.occupancy_static_to_dynamic(prev_state["occupancy"],
                                                                      occupancy_bins(config, "coarse"))
        return new
    if stage == "fine":
        new = dict(prev_state)
        new["opt_state"] = stage_optimizer(config, "fine").init(prev_state["params"])
        new["frozen"] = jax.tree.map(lambda a: jnp.array(a), prev_state["params"])
        return new
    raise ValueError(f"four_d/stages.py hand_over: no hand-over into {stage!r}")


def abstract_state(config, stage):
    """Shapes/dtypes of a stage's state (for restoring its checkpoints)."""
    st = jax.eval_shape(lambda: init_static_state(config))
    for name in STAGES[1:STAGES.index(stage) + 1]:
        st = jax.eval_shape(functools.partial(hand_over, config, stage=name), st)
    return st


# ------------------------------------------------------------------------------------------------
# priors
# ------------------------------------------------------------------------------------------------


def check_priors(priors, config, stage):
    """The priors a stage needs (weight > 0) must be given: a clear error naming the kind and config key."""
    unknown = set(priors) - set(PRIOR_KINDS)
    if unknown:
        raise ValueError(f"four_d/stages.py: unknown prior kind(s) {sorted(unknown)}; known: {PRIOR_KINDS}")
    for kind, key in STAGE_PRIORS[stage].items():
        w = float(config.stages[stage][key])
        if w > 0 and kind not in priors:
            raise ValueError(f"four_d/stages.py: the {stage} stage needs a {kind!r} prior "
                             f"(stages.{stage}.{key} = {w}); pass it in `priors` or set that weight to 0")
    for kind, prior in priors.items():
        if not (isinstance(prior, tuple | list) and len(prior) == 2 and callable(prior[1])):
            raise ValueError(f"four_d/stages.py: priors[{kind!r}] must be a (params, fn) pair")


def _active(config, stage, priors):
    """{kind: weight} of the priors a stage uses (given and with weight > 0)."""
    out = {}
    for kind, key in STAGE_PRIORS[stage].items():
        w = float(config.stages[stage][key])
        if w > 0 and kind in priors:
            out[kind] = w
    return out


def _call_prior(fn, params, key, inputs, view):
    if getattr(fn, "needs_view", False):
        loss, aux = fn(params, key, *inputs, view=view)
    else:
        loss, aux = fn(params, key, *inputs)
    scalars = {k: jnp.mean(jnp.asarray(v, jnp.float32)) for k, v in dict(aux).items()
               if jnp.ndim(v) == 0 or k in ("t", "grad_norm")}
    return jnp.asarray(loss, jnp.float32), scalars


# ------------------------------------------------------------------------------------------------
# the step
# ------------------------------------------------------------------------------------------------


def _rays_of(poses, K, size):
    """Rays of poses [N, 4, 4] at size x size: origins, directions [N * size^2, 3], optical axes [N * size^2, 3]."""
    o, d = jax.vmap(lambda p: camera_rays(p, K, size, size))(poses)
    axis = jnp.broadcast_to(poses[:, None, 2, :3], (poses.shape[0], size * size, 3))
    return o.reshape(-1, 3), d.reshape(-1, 3), axis.reshape(-1, 3)


def sample_clip_views(config, key, stage_cfg, batch):
    """Cameras and times of `batch` clips: dict(polar, azimuth, radius, times [B, F], poses [B, F, 4, 4],
    from_zero [B], dynamic [B]). Dynamic camera with probability dynamic_cam_rate (official 0.9), else the
    trajectory's first camera for every frame; times by temporal balanced sampling."""
    s, cc = config.stages, config.cameras
    c = config.stages.coarse  # the clip settings are the coarse stage's (the fine stage continues them)
    f = int(c.num_frames)
    k_t, k_cam, k_dyn = jax.random.split(key, 3)
    ts = cam_lib.temporal_balanced_sampling_batch(k_t, batch, int(c.precision), f, float(c.zero_rate),
                                                  float(c.mirror_rate))

    def traj(k):
        return cam_lib.dynamic_camera_trajectory(
            k, f, radius=cc.radius, fovy=cc.fovy, size=int(s.render_size), polar_range=tuple(s.polar_range),
            azimuth_range=tuple(s.azimuth_range), uniform_sphere_rate=float(s.uniform_sphere_rate),
            delta_polar=float(c.delta_polar), delta_azimuth=float(c.delta_azimuth))

    tr = jax.vmap(traj)(jax.random.split(k_cam, batch))
    dynamic = jax.random.uniform(k_dyn, (batch,)) < float(c.dynamic_cam_rate)
    polar = jnp.where(dynamic[:, None], tr["polar"], tr["polar"][:, :1])
    azimuth = jnp.where(dynamic[:, None], tr["azimuth"], tr["azimuth"][:, :1])
    radius = tr["radius"]
    return {"polar": polar, "azimuth": azimuth, "radius": radius, "times": ts["times"],
            "poses": cam_lib.pose_from_spherical(polar, azimuth, radius), "from_zero": ts["from_zero"],
            "dynamic": dynamic}


def make_stage_step(config, stage, priors, mesh):
    """The jitted step of a stage: step(state, ref, prior_params) -> (state, metrics).

    ref: dict(rgb, mask, depth) of prepare_reference (replicated); prior_params: {kind: params} of the
    active priors. One compiled program serves the whole stage (shading, reference / SDS branch, zero123
    gating are traced). The ray batch is sharded over the mesh axis "data".
    """
    if stage not in STAGES:
        raise ValueError(f"four_d/stages.py: unknown stage {stage!r}; choose from {STAGES}")
    check_priors(priors, config, stage)
    active = _active(config, stage, priors)
    fns = {k: priors[k][1] for k in active}
    s, rc, cc = config.stages, config.render, config.cameras
    sc = s[stage]
    seed = int(config.seed)
    model = stage_model(config, stage)
    field_apply = render_lib.make_field_apply(model)
    optimizer = stage_optimizer(config, stage)
    spec = grid_spec_from_config(config.grid)
    size = int(s.render_size)
    rsize = reference_size(config)
    batch = int(s.batch)
    K = intrinsics_from_fov(float(cc.fovy), size, size)
    K_ref = intrinsics_from_fov(float(cc.fovy), rsize, rsize)
    ref_pose = cam_lib.pose_from_spherical(float(s.reference_polar), float(s.reference_azimuth), float(cc.radius))
    first, end = stage_bounds(config)[stage]
    reg = stage_regularisers(config)
    need_normals = reg["lambda_orient"] > 0 or reg["lambda_normal_tv"] > 0 or reg["lambda_normal_smooth"] > 0
    dynamic = stage != "static"
    f = int(s.coarse.num_frames) if dynamic else 1
    if dynamic and int(s.coarse.precision) < f:
        raise ValueError(f"four_d/stages.py: stages.coarse.precision ({s.coarse.precision}) must be >= "
                         f"stages.coarse.num_frames ({f})")
    cn_idx = cn_frame_indices(f, int(s.fine.cn_frames)) if stage == "fine" else ()
    lam_tv = float(config.reg.lambda_time_tv) if dynamic else 0.0
    use_occ = bool(s.use_occupancy)
    n_samples = int(rc.occupancy_num_samples) if use_occ else int(rc.num_samples)
    ndev = mesh.shape["data"]
    rep = NamedSharding(mesh, P())
    data_sharding = NamedSharding(mesh, P("data"))
    for what, count in (("render_size^2", size * size), ("reference rays", rsize * rsize)):
        if count % ndev:
            raise ValueError(f"four_d/stages.py: the {what} ({count}) must be a multiple of the {ndev} devices")
    common = dict(bound=rc.bound, min_near=rc.min_near, jitter=bool(rc.jitter), num_samples=n_samples,
                  normal_eps=float(config.field.normal_eps), chunk=int(rc.train_chunk), remat=bool(rc.remat),
                  ray_sharding=data_sharding, coarse_samples=int(rc.coarse_samples))

    def render(params, o, d, t, key, axis, occ, level_mask, **kw):
        shard = lambda a: jax.lax.with_sharding_constraint(a, data_sharding)
        return render_lib.render_rays_chunked(field_apply, params, shard(o), shard(d), shard(t), key,
                                              optical_axis=shard(axis), occupancy=occ, level_mask=level_mask,
                                              **common, **kw)

    def reference_loss(params, key, ref, occ, level_mask, step):
        k_no, k_nd, k_r = jax.random.split(key, 3)
        o, d, axis = _rays_of(ref_pose[None], K_ref, rsize)
        noise = float(s.known_view_noise)
        o = o + noise * jax.random.normal(k_no, o.shape)
        d = d + noise * jax.random.normal(k_nd, d.shape)
        d = d / jnp.linalg.norm(d, axis=-1, keepdims=True)
        # official: lambertian with ambient 1 = albedo (normals only for the regularisers)
        out = render(params, o, d, jnp.zeros(o.shape[:1]), k_r, axis, occ, level_mask, bg=jnp.ones(3),
                     shading=SHADING["albedo"], ambient=1.0, compute_normals=need_normals)
        terms = reference_losses(out, ref, config)
        regs = render_lib.regularisers(out, reg, num_samples=n_samples, step=step, iterations=end,
                                       image_shape=(rsize, rsize))
        terms.update({k: v for k, v in regs.items() if k != "total"})
        return terms

    def sds_loss(params, frozen, key, step, occ, level_mask, pp):
        k_view, k_shade, k_bg, k_light, k_r, k_p = jax.random.split(key, 6)
        kp = dict(zip(PRIOR_KINDS, jax.random.split(k_p, len(PRIOR_KINDS)), strict=True))
        mode, ambient = shading_schedule(config, stage, step, k_shade)
        bg = jax.random.uniform(k_bg, (3,))  # official bg_radius -1: one random colour per step
        if dynamic:
            v = sample_clip_views(config, k_view, sc, batch)
        else:
            c1 = cam_lib.random_cameras(k_view, batch, radius=cc.radius, fovy=cc.fovy, size=size,
                                        polar_range=tuple(s.polar_range), azimuth_range=tuple(s.azimuth_range),
                                        uniform_sphere_rate=float(s.uniform_sphere_rate))
            v = {"polar": c1["polar"][:, None], "azimuth": c1["azimuth"][:, None],
                 "radius": c1["radius"][:, None], "times": jnp.zeros((batch, 1)), "poses": c1["poses"][:, None]}
        poses = v["poses"].reshape(batch * f, 4, 4)
        o, d, axis = _rays_of(poses, K, size)
        tt = jnp.repeat(v["times"].reshape(-1), size * size)
        light = field_lib.jittered_light(k_light, o)  # official normalize(rays_o + g), one g per step
        kw = dict(bg=bg, shading=mode, ambient=ambient, light_dir=light, compute_normals=need_normals)
        out = render(params, o, d, tt, k_r, axis, occ, level_mask, **kw)
        imgs = out["rgb"].reshape(batch, f, size, size, 3)
        rel_az = cam_lib.wrap_degrees(v["azimuth"] - float(s.reference_azimuth))
        terms, logs = {}, {}
        v["background"] = jnp.broadcast_to(bg, (batch, 3))
        vkeys = ("polar", "azimuth", "radius", "times")
        if not dynamic:
            view1 = {**{k: v[k][:, 0] for k in vkeys}, "background": v["background"]}
            if "sd" in fns:
                loss, aux = _call_prior(fns["sd"], pp["sd"], kp["sd"], (imgs[:, 0], rel_az[:, 0]), view1)
                terms["sd"] = active["sd"] * loss
                logs.update({f"sd_{k}": a for k, a in aux.items()})
            if "zero123" in fns:
                loss, aux = _call_prior(fns["zero123"], pp["zero123"], kp["zero123"],
                                        (imgs[:, 0], v["polar"][:, 0], v["azimuth"][:, 0], v["radius"][:, 0]),
                                        view1)
                terms["zero123"] = active["zero123"] * loss
                logs.update({f"zero123_{k}": a for k, a in aux.items()})
        else:
            view = {**{k: v[k] for k in vkeys}, "background": v["background"]}
            if "video" in fns:
                loss, aux = _call_prior(fns["video"], pp["video"], kp["video"], (imgs, rel_az[:, 0]), view)
                terms["video"] = active["video"] * loss
                logs.update({f"video_{k}": a for k, a in aux.items()})
            if "zero123" in fns:
                # official: only when the clip starts at t = 0 and is not mirrored, on frame 0 (with batch
                # > 1 the term runs when every clip of the step qualifies; official batch is 1)
                gate = jnp.all(v["from_zero"])
                view0 = {**{k: v[k][:, 0] for k in vkeys}, "background": v["background"]}

                def z_on(args):
                    im, ks = args
                    return _call_prior(fns["zero123"], pp["zero123"], ks,
                                       (im, v["polar"][:, 0], v["azimuth"][:, 0], v["radius"][:, 0]), view0)

                z_shape = jax.eval_shape(z_on, (imgs[:, 0], kp["zero123"]))
                z_off = lambda args: jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), z_shape)
                loss, aux = jax.lax.cond(gate, z_on, z_off, (imgs[:, 0], kp["zero123"]))
                terms["zero123"] = active["zero123"] * loss
                logs.update({f"zero123_{k}": a for k, a in aux.items()})
                logs["zero123_on"] = gate.astype(jnp.float32)
            if "controlnet" in fns:
                idx = jnp.asarray(cn_idx)
                sel = imgs[:, idx]
                # the frozen coarse model renders the same rays, times, shading, background and light
                ray_idx = (jnp.arange(batch)[:, None, None] * f + idx[None, :, None]) * (size * size) \
                    + jnp.arange(size * size)[None, None, :]
                ray_idx = ray_idx.reshape(-1)
                cond = render(frozen, o[ray_idx], d[ray_idx], tt[ray_idx], k_r, axis[ray_idx], occ, level_mask,
                              **dict(kw, light_dir=light[ray_idx]))["rgb"]
                cond = jax.lax.stop_gradient(cond).reshape(batch, len(cn_idx), size, size, 3)
                cview = {**{k: v[k][:, idx] for k in vkeys}, "background": v["background"]}
                loss, aux = _call_prior(fns["controlnet"], pp["controlnet"], kp["controlnet"],
                                        (sel, cond, rel_az[:, 0]), cview)
                terms["controlnet"] = active["controlnet"] * loss
                logs.update({f"controlnet_{k}": a for k, a in aux.items()})
        regs = render_lib.regularisers(out, reg, num_samples=n_samples, step=step, iterations=end,
                                       image_shape=(batch * f, size, size))
        terms.update({k: a for k, a in regs.items() if k != "total"})
        logs["shading"] = jnp.asarray(mode, jnp.float32)
        return terms, logs

    def step_fn(state, ref, pp):
        step = state["step"]
        k_ref, k_sds, k_occ, k_tv = jax.random.split(train_loop.step_key(seed, step), 4)
        level_mask = stage_level_mask(config, step)
        params = state["params"]
        frozen = state.get("frozen")
        new = {}
        occ = None
        if use_occ:
            every = int(rc.occupancy_update_every)

            def do_refresh(grid):
                dens = lambda x, tt: field_apply(params, x, tt, level_mask)["sigma"]
                return render_lib.update_occupancy(grid, dens, k_occ, bound=rc.bound, decay=rc.occupancy_decay)

            grid = jax.lax.cond(step % every == 0, do_refresh, lambda g: g, state["occupancy"])
            new["occupancy"] = grid
            occ = render_lib.occupancy_mask(grid, rc.density_threshold)

        def ref_branch(p):
            terms = reference_loss(p, k_ref, ref, occ, level_mask, step)
            return terms, {}

        def sds_branch(p):
            return sds_loss(p, frozen, k_sds, step, occ, level_mask, pp)

        # the two branches' terms and logs, with zeros for what a branch does not compute
        shapes = [jax.eval_shape(b, params) for b in (ref_branch, sds_branch)]
        term_keys = sorted(set(shapes[0][0]) | set(shapes[1][0]))
        log_keys = sorted(set(shapes[0][1]) | set(shapes[1][1]))

        def padded(branch):
            def loss_fn(p):
                terms, logs = branch(p)
                terms = {k: terms.get(k, jnp.zeros((), jnp.float32)) for k in term_keys}
                logs = {k: logs.get(k, jnp.zeros((), jnp.float32)) for k in log_keys}
                total = sum(terms.values())
                if lam_tv > 0:
                    tv = temporal_tv_loss(p["grid"]["tables"], k_tv, spec, int(config.reg.tv_points),
                                          str(config.reg.time_tv_mode))
                    terms["time_tv"] = lam_tv * tv
                    total = total + terms["time_tv"]
                return total, {**terms, **logs}

            return jax.value_and_grad(loss_fn, has_aux=True)

        is_ref = is_reference_step(config, step)
        (loss, aux), grads = jax.lax.cond(is_ref, padded(ref_branch), padded(sds_branch), params)
        updates, opt_state = optimizer.update(grads, state["opt_state"], params)
        params = optax.apply_updates(params, updates)
        new.update({"params": params, "opt_state": opt_state, "step": step + 1})
        if frozen is not None:
            new["frozen"] = frozen
        metrics = {"loss": loss, "reference_step": is_ref.astype(jnp.float32), **aux}
        if use_occ:
            metrics["occupied_fraction"] = jnp.mean(occ.astype(jnp.float32))
        return new, metrics

    return jax.jit(step_fn, in_shardings=(rep, rep, rep), out_shardings=(rep, rep), donate_argnums=(0,))


# ------------------------------------------------------------------------------------------------
# evaluation renders
# ------------------------------------------------------------------------------------------------


def make_stage_renderer(config, stage, size, mesh=None, shading="albedo"):
    """Deterministic renderer fn(params, pose, t) -> dict(rgb [size, size, 3], ...) of a stage's field,
    white background, headlight (a render for people / evaluation; no occupancy skipping)."""
    rc, cc = config.render, config.cameras
    model = stage_model(config, stage)
    fn = render_lib.make_image_renderer(render_lib.make_field_apply(model), size, size, chunk=int(rc.chunk),
                                        mesh=mesh, num_samples=int(rc.num_samples), bound=rc.bound,
                                        min_near=rc.min_near, bg=jnp.ones(3, jnp.float32), jitter=False,
                                        shading=shading, ambient=1.0)
    K = intrinsics_from_fov(float(cc.fovy), size, size)
    return lambda params, pose, t: fn(params, pose, K, jnp.float32(t), None)


# ------------------------------------------------------------------------------------------------
# the run
# ------------------------------------------------------------------------------------------------


def _restore_stage(config, stage_dir, stage, sharding):
    ckpt = os.path.join(stage_dir, "checkpoints")
    if not os.path.isdir(ckpt):
        return None
    mngr = train_loop.checkpoint_manager(ckpt, int(config.stages.max_checkpoints))
    try:
        ab = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding),
                          abstract_state(config, stage))
        state, _ = train_loop.restore_checkpoint(mngr, ab)
    finally:
        mngr.close()
    return state


def run_stages(image_rgba, depth, priors, out_dir, config, stages=STAGES, resume=False, stop=None, mesh=None,
               progress=True, hook=None):
    """Run the requested stages in order into OUT_DIR/<stage>/ (checkpoints/, metrics.jsonl).

    image_rgba [H, W, 4] and depth [H, W]: the preprocessed square reference (four_d/preprocess.py).
    priors: {kind: (params, fn)} (module docstring). A stage after the first requested one starts from the
    state the previous stage ended with; a first requested stage other than "static" starts from the last
    checkpoint of the stage before it in OUT_DIR (an error names it when missing). Without `resume` the
    requested stages' folders are cleared first; with it, each stage continues from its last checkpoint
    (a finished stage is skipped). `stop` (GracefulStop): the loop ends after the current step, saves it
    and returns with result["stopped"] = global step. hook(stage, done, state) is called after every step
    (evaluation curves: benchmarks/stages_oracle.py).

    Returns dict(stage -> dict(params, occupancy, step), "stopped": step or None, "state": last state).
    """
    from configs.four_d import RANGES
    from configs.validate import check_config

    check_config(config, RANGES)
    stages = tuple(stages)
    for st in stages:
        if st not in STAGES:
            raise ValueError(f"four_d/stages.py: unknown stage {st!r}; choose from {STAGES}")
    order = [STAGES.index(st) for st in stages]
    if order != sorted(order) or len(set(order)) != len(order):
        raise ValueError(f"four_d/stages.py: stages must be a subset of {STAGES} in that order, got {stages}")
    for st in stages:
        check_priors(priors, config, st)
    ref_host = prepare_reference(image_rgba, depth, config)
    mesh = train_loop.make_mesh() if mesh is None else mesh
    rep = NamedSharding(mesh, P())
    ref = train_loop.replicate({k: ref_host[k] for k in ("rgb", "mask", "depth")}, rep)
    bounds = stage_bounds(config)
    os.makedirs(out_dir, exist_ok=True)
    if not resume and train_loop.is_main_process():
        for st in stages:
            train_loop.clear_previous_run(os.path.join(out_dir, st))
    if train_loop.is_main_process():
        write_text(os.path.join(out_dir, "config.json"), config.to_json(indent=1))

    results, state, stopped = {}, None, None
    for st in stages:
        sdir = os.path.join(out_dir, st)
        os.makedirs(sdir, exist_ok=True)
        first, end = bounds[st]
        cur = _restore_stage(config, sdir, st, rep) if resume else None
        if cur is None:
            if st == "static":
                cur = init_static_state(config)
            else:
                prev_name = STAGES[STAGES.index(st) - 1]
                if state is None:
                    prev = _restore_stage(config, os.path.join(out_dir, prev_name), prev_name, rep)
                    if prev is None or int(prev["step"]) != bounds[prev_name][1]:
                        raise ValueError(f"four_d/stages.py: the {st} stage starts from the finished {prev_name} "
                                         f"stage, but {os.path.join(out_dir, prev_name, 'checkpoints')} has no "
                                         f"checkpoint of its last step {bounds[prev_name][1]}; run {prev_name} first")
                    state = prev
                cur = hand_over(config, state, st)
        cur = train_loop.replicate(cur, rep)
        pp = train_loop.replicate({k: priors[k][0] for k in _active(config, st, priors)}, rep)
        step_fn = make_stage_step(config, st, priors, mesh)
        mngr = train_loop.checkpoint_manager(os.path.join(sdir, "checkpoints"), int(config.stages.max_checkpoints))
        try:
            cur, stopped = train_loop.run_loop(
                lambda s_, pp=pp, fn=step_fn: fn(s_, ref, pp), cur, first=int(cur["step"]), last=end,
                log_path=os.path.join(sdir, "metrics.jsonl"), log_every=int(config.stages.log_every),
                checkpoint_every=int(config.stages.checkpoint_every),
                save=lambda s_, m=mngr: train_loop.save_checkpoint(m, s_, config), stop=stop, progress=progress,
                desc=f"four-d {st}", extra_row={"stage": st}, postfix=("loss",),
                hook=None if hook is None else (lambda done, s_, _w, st=st: hook(st, done, s_)))
            if int(cur["step"]) == first == end and mngr.latest_step() is None:
                train_loop.save_checkpoint(mngr, cur, config)  # a 0-iteration stage still hands over
        finally:
            mngr.close()
        state = cur
        results[st] = {"params": cur["params"], "occupancy": cur.get("occupancy"), "step": int(cur["step"])}
        if stopped is not None:
            break
    if train_loop.is_main_process():
        summary = {st: {"step": r["step"]} for st, r in results.items()}
        write_text(os.path.join(out_dir, "stages.json"), json.dumps({"stopped": stopped, **summary}, indent=1))
    return {**results, "stopped": stopped, "state": state}
