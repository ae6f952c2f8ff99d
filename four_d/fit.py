"""Fit a DynamicField to posed, timed images (4D reconstruction; `four-d fit DATA_DIR --out DIR`).

Sections (big_vision style): data -> mesh -> model/optimiser -> state (fresh or resumed) -> jitted
step -> loop (metrics JSON lines, checkpoints) -> evaluation (held-out PSNR/SSIM JSON, orbit mp4).

- Data: a folder written by four_d.scenes.write_dataset (frames + cameras.json; "split" train/test).
- Loss: photometric MSE over random ray batches drawn from random (train frame, pixel) pairs, plus
  lambda_time_tv * temporal TV of the time grids (official run-dynamic.sh --lambda_time_tv 0.1), plus
  the Animate124 regularisers that make sense per ray (four_d.render.regularisers: orientation and
  weight entropy, weights fit.lambda_orient / fit.lambda_entropy, default 0; the normal-image TV/blur
  terms need image-shaped batches and are not used here).
- Empty-space skipping (fit.use_occupancy): a per-time-bin density grid [B, G, G, G] in the train state,
  refreshed inside the step every render.occupancy_update_every steps from fit.occupancy_warmup on
  (decay + max, four_d.render.update_occupancy, key occupancy_key(seed, step)); from the warm-up on the
  step renders with occupancy-guided sampling (render_rays occupancy=..., render.occupancy_num_samples
  samples, render.coarse_samples lookups). Evaluation renders of a skipping run use the final grid.
- Coarse-to-fine: the last field.grid_levels_mask levels are zeroed while step <= fit.level_mask_iters
  (grid4d.level_mask_for_step; 0 disables), in the loss and in the occupancy refreshes.
- Optimiser: Adam(0.9, 0.99, eps 1e-15), grid tables lr 1e-2 and MLP lr 1e-3 (official, via
  optax.multi_transform on the param path), optional value clipping (official clip_grad_value_ 1).
- Determinism: the step's PRNG key is fold_in(PRNGKey(seed), step) and the batch indices are drawn
  from it, so the data order is a function of the step; a resumed run replays exactly the same steps
  as an uninterrupted one (bit-identical params on the same machine and device count).
- Scaling: one Mesh over the devices with axis "data"; the ray batch is sharded on it
  (with_sharding_constraint), params/optimiser state replicated; the step is jitted with explicit
  shardings and donates the state.
- Checkpoints: orbax CheckpointManager with named items "state" (StandardSave; params, optimiser
  state, step and the occupancy grid, so a resumed run is bit-identical) and "config" (JSON).
- Multi-host (`four-d fit --distributed`): the CLI calls jax.distributed.initialize() first; every
  process runs the same steps, evaluation renders and checkpoint saves (orbax saves are collective and
  write the replicated state from the primary host); metrics.jsonl, config.json, results.json and the
  video are written by process 0 only.
"""

import json
import os
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from clitools.outputs import atomic_path, write_json, write_text
from four_d import field as field_lib
from four_d import metrics as metrics_lib
from four_d import render as render_lib
from four_d import train_loop
from four_d.field import field_from_config
from four_d.grid4d import grid_spec_from_config, level_mask_for_step, temporal_tv_loss
from kernels.camera import camera_rays

# The per-frame arrays the train step reads (frame_rays keys).
TRAIN_RAY_KEYS = ("origins", "directions", "rgb", "times", "axes")


class DatasetError(ValueError):
    """A data folder that four_d/fit.py cannot read."""


# ------------------------------------------------------------------------------------------------
# data
# ------------------------------------------------------------------------------------------------


def load_dataset(data_dir):
    """Read DATA_DIR/cameras.json and its frames.

    Returns dict(images [N, H, W, 3] float32 in [0, 1], poses [N, 4, 4], K [3, 3], times [N],
    split [N] (str), background [3], height, width).
    """
    import imageio.v3 as iio

    path = os.path.join(data_dir, "cameras.json")
    if not os.path.isfile(path):
        raise DatasetError(f"four_d/fit.py: {path} not found (write one with `four-d make-scene DIR`)")
    meta = _read_cameras_json(path)
    frames = meta["frames"]
    images = []
    for i, fr in enumerate(frames):
        file = os.path.join(data_dir, fr["file"])
        if not os.path.isfile(file):
            raise DatasetError(f"{file}: frame {i} of {path} not found")
        try:
            img = np.asarray(iio.imread(file), np.float32) / 255.0
        except Exception as e:  # imageio raises many types for a corrupt file
            raise DatasetError(f"{file}: unreadable image ({type(e).__name__}: {e})") from None
        if img.ndim != 3 or img.shape[-1] < 3:
            raise DatasetError(f"{file}: not an RGB image (shape {img.shape})")
        images.append(img[..., :3])
    shapes = {im.shape for im in images}
    if len(shapes) != 1:
        raise DatasetError(f"{path}: the frames have different sizes {sorted(shapes)}")
    images = np.stack(images)
    return {
        "images": images,
        "poses": np.asarray([fr["pose"] for fr in frames], np.float32),
        "K": meta["K"],
        "times": np.asarray([fr["time"] for fr in frames], np.float32),
        "split": np.asarray([fr.get("split", "train") for fr in frames]),
        "background": meta["background"],
        "height": images.shape[1],
        "width": images.shape[2],
    }


def _read_cameras_json(path):
    """Parse and validate cameras.json: K [3, 3], frames [{file, pose 4x4, time in [0, 1], split}], background."""
    try:
        with open(path) as f:
            meta = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DatasetError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(meta, dict):
        raise DatasetError(f"{path}: expected a JSON object with 'K' and 'frames'")
    frames = meta.get("frames")
    if not isinstance(frames, list) or not frames:
        raise DatasetError(f"{path}: 'frames' must be a non-empty list")

    def matrix(value, shape, what):
        try:
            a = np.asarray(value, np.float32)
        except (TypeError, ValueError):
            a = None
        if a is None or a.shape != shape or not np.all(np.isfinite(a)):
            raise DatasetError(f"{path}: {what} must be a finite {shape[0]}x{shape[1]} matrix, got {value!r:.80}")
        return a

    K = matrix(meta.get("K"), (3, 3), "'K'")
    if not (K[0, 0] > 0 and K[1, 1] > 0 and K[2, 2] == 1 and not K[2, :2].any()):
        raise DatasetError(f"{path}: 'K' must be [[fx, 0, cx], [0, fy, cy], [0, 0, 1]] with fx, fy > 0")
    for i, fr in enumerate(frames):
        if not isinstance(fr, dict) or not isinstance(fr.get("file"), str) or not fr["file"]:
            raise DatasetError(f"{path}: frame {i} needs a 'file' name")
        pose = matrix(fr.get("pose"), (4, 4), f"frame {i} 'pose'")
        R = pose[:3, :3].astype(np.float64)
        if not np.allclose(R @ R.T, np.eye(3), atol=1e-3) or not np.allclose(pose[3], [0, 0, 0, 1]):
            raise DatasetError(f"{path}: frame {i} 'pose' is not a rigid world-to-camera matrix")
        t = fr.get("time")
        if isinstance(t, bool) or not isinstance(t, int | float) or not 0.0 <= t <= 1.0:
            raise DatasetError(f"{path}: frame {i} 'time' must be a number in [0, 1], got {t!r}")
        if fr.get("split", "train") not in ("train", "test"):
            raise DatasetError(f"{path}: frame {i} 'split' must be 'train' or 'test', got {fr.get('split')!r}")
    bg = meta.get("background", [1.0, 1.0, 1.0])
    try:
        bg = np.asarray(bg, np.float32)
    except (TypeError, ValueError):
        bg = None
    if bg is None or bg.shape != (3,) or not np.all((bg >= 0) & (bg <= 1)):
        raise DatasetError(f"{path}: 'background' must be an RGB triple in [0, 1]")
    meta["K"], meta["background"] = K, bg
    return meta


def frame_rays(data, split="train"):
    """All rays of one split: dict(origins, directions, rgb [N, H*W, 3], times [N], axes [N, 3] (optical
    axes), poses, index)."""
    idx = np.nonzero(data["split"] == split)[0]
    if idx.size == 0:
        raise DatasetError(f"four_d/fit.py: the dataset has no {split!r} frames")
    h, w = data["height"], data["width"]
    K = jnp.asarray(data["K"])
    o, d = jax.vmap(lambda p: camera_rays(p, K, h, w))(jnp.asarray(data["poses"][idx]))
    poses = jnp.asarray(data["poses"][idx])
    return {
        "origins": o.reshape(idx.size, h * w, 3),
        "directions": d.reshape(idx.size, h * w, 3),
        "rgb": jnp.asarray(data["images"][idx]).reshape(idx.size, h * w, 3),
        "times": jnp.asarray(data["times"][idx]),
        "axes": poses[:, 2, :3],  # camera +z (optical axis) in world coordinates, for z-depth
        "poses": poses,
        "index": idx,
    }


# ------------------------------------------------------------------------------------------------
# model, optimiser, state
# ------------------------------------------------------------------------------------------------


make_mesh = train_loop.make_mesh
replicate = train_loop.replicate
is_main_process = train_loop.is_main_process
step_key = train_loop.step_key
save_checkpoint = train_loop.save_checkpoint
restore_checkpoint = train_loop.restore_checkpoint


def make_optimizer(config):
    """Adam per official settings: grid tables lr_grid, everything else lr_mlp; optional value clipping
    (optim.grad_clip, official clip_grad_value_ 1). Built by four_d.train_loop.make_optimizer."""
    return train_loop.make_optimizer(config.optim)


def init_state(config, model, optimizer, seed=None):
    """Fresh train state dict(params, opt_state, step int32[, occupancy [B, G, G, G] float32]).

    "occupancy" (only with config.fit.use_occupancy) is the per-time-bin density grid of
    four_d.render (zeros until the first refresh); it is part of the state so checkpoints carry it.
    """
    seed = config.seed if seed is None else seed
    params = model.init(jax.random.PRNGKey(seed), jnp.zeros((1, 3)), jnp.zeros((1,)))["params"]
    state = {"params": params, "opt_state": optimizer.init(params), "step": jnp.zeros((), jnp.int32)}
    if config.fit.get("use_occupancy", False):
        rc = config.render
        state["occupancy"] = render_lib.init_occupancy(int(rc.occupancy_resolution), int(rc.occupancy_time_bins))
    return state


# A separate stream for occupancy refreshes, so turning skipping on/off does not change the ray batches.
_OCCUPANCY_STREAM = 0x0CC


def occupancy_key(seed, step):
    """The PRNG key of the occupancy refresh at `step`: a pure function of (seed, step)."""
    return jax.random.fold_in(step_key(seed, step), _OCCUPANCY_STREAM)


def fit_level_mask(config, step):
    """Coarse-to-fine level mask [L] for fit at `step` (traced ok), or None when disabled.

    The last config.field.grid_levels_mask levels are zeroed while step <= config.fit.level_mask_iters
    (grid4d.level_mask_for_step); fit.level_mask_iters = 0 (or grid_levels_mask = 0) disables it.
    """
    iters = int(config.fit.get("level_mask_iters", 0))
    masked = int(config.field.grid_levels_mask)
    if iters <= 0 or masked <= 0:
        return None
    return level_mask_for_step(step, int(config.grid.num_levels), masked, iters)


def occupancy_schedule(config, step):
    """(refresh, use) for `step` (python int or traced int32).

    refresh: the occupancy grid is refreshed at the start of this step, i.e. at steps
    warmup, warmup + every, warmup + 2 every, ...; use: the step renders with skipping (step >= warmup,
    so the grid has been refreshed at least once). Both False when fit.use_occupancy is off.
    """
    if not config.fit.get("use_occupancy", False):
        return False, False
    warm = int(config.fit.get("occupancy_warmup", 0))
    every = int(config.render.occupancy_update_every)
    use = step >= warm
    refresh = use & ((step - warm) % every == 0)
    return refresh, use


def fit_regularisers(config):
    """The `reg`-style section four_d.render.regularisers gets in fit (weights from config.fit).

    Only the per-ray terms are meaningful for random ray batches: orientation (needs normals) and
    weight entropy. The normal-image TV / blur terms need image-shaped batches and stay off.
    """
    return {
        "lambda_orient": float(config.fit.lambda_orient),
        "lambda_entropy": float(config.fit.lambda_entropy),
        "lambda_normal_tv": 0.0,
        "lambda_normal_smooth": 0.0,
    }


def fit_shading(config):
    """(shading index, ambient) of fit's training renders (config.fit.shading / fit.ambient)."""
    return field_lib.shading_index(str(config.fit.get("shading", "albedo"))), float(config.fit.get("ambient", 1.0))


def make_train_step(config, model, optimizer, rays, background, mesh):
    """Jitted step(state, rays) -> (state, metrics) with donated state.

    rays: frame_rays(...) dict (replicated); the batch of config.fit.batch_rays rays is drawn inside the
    step from step_key(seed, step) and sharded over mesh axis "data".

    Rendering: four_d.render.render_rays_chunked, render.train_chunk rays per chunk under
    jax.checkpoint when render.remat (memory bounded by a chunk). The shading mode is fit.shading
    (ambient fit.ambient) and non-albedo shading is lit with the official light normalize(rays_o + g),
    g ~ N(0, I) drawn from the step key every step.

    With config.fit.use_occupancy, the step first refreshes state["occupancy"] when
    occupancy_schedule says so (decay + max, key occupancy_key(seed, step)), then renders with
    occupancy-guided sampling (render.occupancy_num_samples samples over the occupied part of each ray,
    render.coarse_samples occupancy lookups) from step fit.occupancy_warmup on, and with uniform
    sampling (render.num_samples) before. Both branches are lax.cond branches of one program, so a
    step only runs one of them.
    """
    batch = int(config.fit.batch_rays)
    ndev = mesh.shape["data"]
    if batch % ndev:
        raise ValueError(f"four_d/fit.py: fit.batch_rays={batch} must be a multiple of the {ndev} devices")
    field_apply = render_lib.make_field_apply(model)
    spec = grid_spec_from_config(config.grid)
    rc = config.render
    seed = int(config.seed)
    lam_tv = float(config.reg.lambda_time_tv)
    reg = fit_regularisers(config)
    iters = int(config.fit.iterations)
    mode, ambient = fit_shading(config)
    # the orientation term needs normals even for albedo shading
    normals = reg["lambda_orient"] > 0
    use_occ = bool(config.fit.get("use_occupancy", False))
    bg = jnp.asarray(background, jnp.float32)
    rep = NamedSharding(mesh, P())
    data_sharding = NamedSharding(mesh, P("data"))
    common = dict(bound=rc.bound, min_near=rc.min_near, bg=bg, jitter=rc.jitter, compute_normals=normals,
                  normal_eps=float(config.field.normal_eps), chunk=int(rc.train_chunk), remat=bool(rc.remat),
                  ray_sharding=data_sharding, coarse_samples=int(rc.coarse_samples))

    def step_fn(state, rays):
        step = state["step"]
        k_frame, k_pix, k_render, k_tv, k_light = jax.random.split(step_key(seed, step), 5)
        nf, npix = rays["rgb"].shape[:2]
        f = jax.random.randint(k_frame, (batch,), 0, nf)
        p = jax.random.randint(k_pix, (batch,), 0, npix)
        shard = lambda a: jax.lax.with_sharding_constraint(a, data_sharding)
        o = shard(rays["origins"][f, p])
        d = shard(rays["directions"][f, p])
        gt = shard(rays["rgb"][f, p])
        t = shard(rays["times"][f])
        axis = shard(rays["axes"][f])
        light = field_lib.jittered_light(k_light, o)  # official: one N(0, I) draw per step
        level_mask = fit_level_mask(config, step)
        # fit's shading is constant for a run: a static mode compiles only its branch (the SDS stages
        # pass a traced index instead, so one program serves their whole shading schedule)
        shading = render_lib.SHADING_MODES[mode]
        new = {}

        def make_loss(occupancy, num_samples):
            def loss_fn(params):
                out = render_lib.render_rays_chunked(
                    field_apply, params, o, d, t, k_render, num_samples=num_samples, occupancy=occupancy,
                    level_mask=level_mask, shading=shading, ambient=ambient, light_dir=light, optical_axis=axis,
                    **common)
                mse = jnp.mean((out["rgb"] - gt) ** 2)
                tv = temporal_tv_loss(params["grid"]["tables"], k_tv, spec, config.reg.tv_points,
                                      config.reg.get("time_tv_mode", "official"))
                terms = render_lib.regularisers(out, reg, num_samples=num_samples, step=step, iterations=iters)
                aux = {"mse": mse, "time_tv": tv, **{k: v for k, v in terms.items() if k != "total"}}
                return mse + lam_tv * tv + terms["total"], aux

            return jax.value_and_grad(loss_fn, has_aux=True)

        params = state["params"]
        if use_occ:
            refresh, use = occupancy_schedule(config, step)

            def do_refresh(grid):
                dens = lambda x, tt: field_apply(params, x, tt, level_mask)["sigma"]
                return render_lib.update_occupancy(grid, dens, occupancy_key(seed, step), bound=rc.bound,
                                                   decay=rc.occupancy_decay)

            grid = jax.lax.cond(refresh, do_refresh, lambda g: g, state["occupancy"])
            mask = render_lib.occupancy_mask(grid, rc.density_threshold)
            (loss, aux), grads = jax.lax.cond(
                use, make_loss(mask, int(rc.occupancy_num_samples)), make_loss(None, int(rc.num_samples)), params)
            new["occupancy"] = grid
            aux["occupied_fraction"] = jnp.mean(mask.astype(jnp.float32))
        else:
            (loss, aux), grads = make_loss(None, int(rc.num_samples))(params)
        updates, opt_state = optimizer.update(grads, state["opt_state"], params)
        params = optax.apply_updates(params, updates)
        new.update({"params": params, "opt_state": opt_state, "step": step + 1})
        return new, {"loss": loss, **aux, "psnr": metrics_lib.mse_to_psnr(aux["mse"])}

    return jax.jit(step_fn, in_shardings=(rep, rep), out_shardings=(rep, rep), donate_argnums=(0,))


# ------------------------------------------------------------------------------------------------
# checkpoints
# ------------------------------------------------------------------------------------------------


def checkpoint_manager(out_dir, config):
    """fit's Orbax manager: OUT_DIR/checkpoints, fit.max_checkpoints kept (four_d.train_loop)."""
    return train_loop.checkpoint_manager(os.path.join(out_dir, "checkpoints"), int(config.fit.max_checkpoints))


# ------------------------------------------------------------------------------------------------
# evaluation
# ------------------------------------------------------------------------------------------------


def make_renderer(config, model, h, w, background, mesh=None, occupancy=None):
    """Deterministic image renderer fn(params, pose, K, t) (no jitter) for evaluation and videos.

    occupancy: None (uniform sampling) or a density grid [B, G, G, G] (the train state's); then the
    render.num_samples samples are placed over the cells occupied per occupancy_mask (as the official
    test renders march the occupancy grid). A field trained with skipping is only constrained inside
    occupied cells, so its renders must use the same grid.
    """
    rc = config.render
    mode, ambient = fit_shading(config)
    kw = dict(shading=mode, ambient=ambient)  # lit by the fixed headlight: a render for people
    if occupancy is not None:
        mask = jnp.asarray(np.asarray(jax.device_get(render_lib.occupancy_mask(occupancy, rc.density_threshold))))
        kw.update(occupancy=mask, coarse_samples=int(rc.coarse_samples))
    fn = render_lib.make_image_renderer(
        render_lib.make_field_apply(model), h, w, chunk=int(rc.chunk), mesh=mesh,
        num_samples=rc.num_samples, bound=rc.bound, min_near=rc.min_near,
        bg=jnp.asarray(background, jnp.float32), jitter=False, **kw)
    return lambda params, pose, K, t: fn(params, pose, K, jnp.float32(t), None)


def evaluate(renderer, params, data, split="test"):
    """Mean PSNR/SSIM over one split's frames: dict(psnr, ssim, lpips, per_frame psnr list)."""
    idx = np.nonzero(data["split"] == split)[0]
    if idx.size == 0:
        raise DatasetError(f"four_d/fit.py: the dataset has no {split!r} frames to evaluate")
    per = []
    K = jnp.asarray(data["K"])
    for i in idx:
        pred = renderer(params, jnp.asarray(data["poses"][i]), K, float(data["times"][i]))["rgb"]
        per.append(metrics_lib.image_metrics(np.clip(np.asarray(pred), 0, 1), data["images"][i]))
    out = {k: (None if per[0][k] is None else float(np.mean([p[k] for p in per]))) for k in per[0]}
    out["per_frame_psnr"] = [p["psnr"] for p in per]
    return out


def render_orbit_video(renderer, params, config, h, path, fps=25):
    """mp4 of num_test_frames frames on the official test orbit (polar 90), time k / F, frame k at view k."""
    import imageio.v2 as iio2

    from four_d.cameras import orbit_cameras

    cc = config.cameras
    n = int(cc.num_test_frames)
    cams = orbit_cameras(n, polar=cc.test_polar, radius=cc.radius, fovy=cc.fovy, size=h)
    frames = []
    for k in range(n):
        rgb = renderer(params, cams["poses"][k], cams["K"], k / n)["rgb"]
        frames.append((np.clip(np.asarray(rgb), 0, 1) * 255).round().astype(np.uint8))
    # every process renders (the renders are collective over the mesh); only process 0 writes
    if is_main_process():
        with warnings.catch_warnings():
            # imageio-ffmpeg forks only to exec ffmpeg; JAX's generic fork warning does not apply
            warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called", category=RuntimeWarning)
            with atomic_path(path) as tmp:  # a killed run never leaves a truncated mp4
                iio2.mimwrite(tmp, frames, fps=fps, macro_block_size=1)
    return path


# ------------------------------------------------------------------------------------------------
# loop
# ------------------------------------------------------------------------------------------------


_clear_previous_run = train_loop.clear_previous_run
_stop_requested = train_loop.stop_requested


def fit(data_dir, out_dir, config, *, resume=False, mesh=None, progress=True, video=True, evaluate_initial=True,
        stop=None, data=None):
    """Train on DATA_DIR's train frames, write metrics/checkpoints/results into OUT_DIR.

    Without `resume` the run starts afresh: checkpoints and metrics of an earlier run in OUT_DIR are removed
    first (a later --resume must never continue someone else's run). With `resume` it continues from the
    last checkpoint (bit-identical to an uninterrupted run: every step's randomness is a function of the
    seed and the step).

    `stop` (a clitools.signals.GracefulStop, or anything with a `.requested` flag): when it is set the loop
    finishes the current step, writes a checkpoint of it and returns early with results["stopped"] = the
    step reached; no results.json or video is written (those describe a finished run). In multi-process runs
    the processes agree on stopping (a signal to any of them stops all after the same step).
    `data`: the already loaded dataset of `data_dir` (load_dataset), to avoid reading it twice.

    Returns dict(results written to OUT_DIR/results.json, "params": final params, "occupancy": final
    density grid [B, G, G, G] or None without fit.use_occupancy).
    """
    from configs.four_d import RANGES
    from configs.validate import check_config

    check_config(config, RANGES)
    data = load_dataset(data_dir) if data is None else data
    os.makedirs(out_dir, exist_ok=True)
    if not resume and is_main_process():
        _clear_previous_run(out_dir)
    h, w = data["height"], data["width"]
    mesh = make_mesh() if mesh is None else mesh
    rep = NamedSharding(mesh, P())
    model = field_from_config(config)
    optimizer = make_optimizer(config)
    rays = frame_rays(data, "train")
    rays = replicate({k: v for k, v in rays.items() if k in TRAIN_RAY_KEYS}, rep)

    mngr = checkpoint_manager(out_dir, config)
    state = None
    if resume:
        abstract = jax.eval_shape(lambda: init_state(config, model, optimizer))
        abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=rep), abstract)
        state, _ = restore_checkpoint(mngr, abstract)
    start_fresh = state is None
    if start_fresh:
        state = init_state(config, model, optimizer)
    state = replicate(state, rep)
    if is_main_process():
        write_text(os.path.join(out_dir, "config.json"), config.to_json(indent=1))

    renderer = make_renderer(config, model, h, w, data["background"], mesh)
    has_test = bool(np.any(data["split"] == "test"))
    results = {}
    if evaluate_initial and start_fresh and has_test:
        results["initial_test"] = evaluate(renderer, state["params"], data)

    eval_every = int(config.fit.eval_every)

    def eval_renderer(st):
        # a field trained with skipping is only constrained inside occupied cells: evaluate with its grid
        if "occupancy" in st and int(st["step"]) > int(config.fit.occupancy_warmup):
            return make_renderer(config, model, h, w, data["background"], mesh, occupancy=st["occupancy"])
        return renderer

    step_fn = make_train_step(config, model, optimizer, rays, data["background"], mesh)
    iters = int(config.fit.iterations)
    first = int(state["step"])

    def eval_hook(done, st, write_row):
        if has_test and eval_every > 0 and done % eval_every == 0 and done != iters:
            ev = evaluate(eval_renderer(st), st["params"], data)
            row = {"step": done, "test_psnr": ev["psnr"], "test_ssim": ev["ssim"]}
            results.setdefault("test_curve", []).append(row)
            write_row(row)

    t0 = time.perf_counter()
    # orbax saves are collective on every process: orbax coordinates the hosts and writes the
    # replicated state from the primary host (process 0) only
    state, stopped_at = train_loop.run_loop(
        lambda st: step_fn(st, rays), state, first=first, last=iters,
        log_path=os.path.join(out_dir, "metrics.jsonl"), log_every=int(config.fit.log_every),
        checkpoint_every=int(config.fit.checkpoint_every), save=lambda st: save_checkpoint(mngr, st, config),
        stop=stop, progress=progress, desc="four-d fit", hook=eval_hook)
    mngr.close()

    params = state["params"]
    if stopped_at is not None:
        # a checkpoint of step `stopped_at` is on disk; --resume continues from it
        return {"stopped": stopped_at, "iterations": iters, "params": params, "occupancy": state.get("occupancy")}
    renderer = eval_renderer(state)
    if "occupancy" in state:
        results["occupied_fraction"] = float(jnp.mean(
            render_lib.occupancy_mask(state["occupancy"], config.render.density_threshold)))
    results["iterations"] = iters
    results["train_seconds"] = time.perf_counter() - t0
    if has_test:
        results["test"] = evaluate(renderer, params, data)
        if eval_every > 0:
            results.setdefault("test_curve", []).append(
                {"step": iters, "test_psnr": results["test"]["psnr"], "test_ssim": results["test"]["ssim"]})
    if video:
        results["video"] = render_orbit_video(renderer, params, config, h, os.path.join(out_dir, "orbit.mp4"))
    if is_main_process():
        write_json(os.path.join(out_dir, "results.json"), results, indent=1)
    return {**results, "params": params, "occupancy": state.get("occupancy")}


