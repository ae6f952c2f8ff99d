"""Stage 1 of 3D Cinemagraphy training: the motion network (`cine-jax train motion DATA --out DIR`).

Paper Sec. 3.2 / 4 and shared/reference/cinemagraphy.md section 1: the SPADE U-Net
(cine_jax.nets.motion.SPADEUnet4MaskMotion) maps [RGB in [-1, 1], motion mask, dense hint field] at
motion.size x motion.size to the Eulerian flow; loss lambda_gan L_GAN + lambda_fm L_FM + lambda_epe L_EPE
(paper: 1, 10, 1) with SPADE's multiscale patch discriminator (discriminator.py, hinge loss); Adam with lr G
5e-4 / D 2e-3 (paper) and betas (motion.b1, motion.b2) = (0, 0.9) (SPADE's TTUR setting, which the official
stage-2 config also uses; the paper gives no betas).

Data (`load_clips`): DATA is a folder of clips (DATA/train and DATA/test when present, else DATA is the
training split). A clip is
  * a procedural clip of `cine-jax make-data` (a folder with flow.npy, mask.png, frames/000.png): exact flow
    and mask;
  * a real clip: a folder of frames or a video file (cine_jax.train.clips.read_clip); its average Eulerian
    flow is OpenCV DIS (clips.eulerian_flow, preset motion.flow_preset) and its mask speed >= motion.mask_ratio
    x mean speed (clips.motion_mask).
Each training sample (a pure function of (seed, step, index in the batch)): a clip drawn at random, K in
[hints_min, hints_max] K-means hints with their flow (clips.sample_hints, the SLR-SFS recipe), the official
random sigma (nets.motion.official_hint_sigma), and the official network input (nets.motion.motion_net_inputs:
bicubic image, area mask, densified hints scaled to the working size). The target is the clip's flow
scaled by (S / w, S / h) and resized bilinearly to S x S, the way the hints are.

Step: G and D gradients from the same forward (D sees the generator's flow detached, as SPADE's
discriminator step does, but from the pre-update G instead of regenerating it after the G update: one
generator forward per step); the spectral-norm u, v of both networks advance one power iteration per step
(discriminator.power_iterate). The discriminator input is [generator input, flow] (disc.conditional) or the
flow alone.

Export: the generator as the `motion` component (nets.checkpoints.save_converted(DIR, "motion", ...)), so
`cine-jax animate --weights OUT/weights` uses it.
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from threadpoolctl import threadpool_limits

from cine_jax.nets.motion import SIZE_MULTIPLE, SPADEUnet4MaskMotion, motion_net_inputs, official_hint_sigma
from cine_jax.train import losses
from cine_jax.train.discriminator import MultiscaleDiscriminator, power_iterate
from cine_jax.train.loop import Stage

__all__ = ["evaluate_epe", "load_clips", "make_stage", "motion_sample", "networks"]

_PROCEDURAL = ("flow.npy", "mask.png", os.path.join("frames", "000.png"))


# ------------------------------------------------------------------------------------------------
# data
# ------------------------------------------------------------------------------------------------


def split_dir(data_dir, split):
    """The folder of `split`: DATA/train or DATA (train), DATA/test (test, required)."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    sub = os.path.join(data_dir, split)
    if os.path.isdir(sub):
        return sub
    if split == "test":
        raise ValueError(f"{data_dir}: no 'test' folder of held-out clips")
    return data_dir


def _read_procedural(path):
    from PIL import Image

    from cine_jax.io import InputError

    flow_path, mask_path, frame_path = (os.path.join(path, n) for n in _PROCEDURAL)
    for p in (flow_path, mask_path, frame_path):
        if not os.path.isfile(p):
            raise InputError(f"{p}: file not found (a procedural clip needs flow.npy, mask.png, frames/000.png)")
    try:
        flow = np.load(flow_path, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise InputError(f"{flow_path}: not a readable .npy array ({e})") from None
    if flow.ndim != 3 or flow.shape[-1] != 2 or not np.issubdtype(flow.dtype, np.floating):
        raise InputError(f"{flow_path}: flow must be a float [H, W, 2] array, got {flow.dtype} {flow.shape}")
    if not np.all(np.isfinite(flow)):
        raise InputError(f"{flow_path}: flow contains NaN or inf")
    try:
        image = np.asarray(Image.open(frame_path).convert("RGB"), np.uint8)
        mask = np.asarray(Image.open(mask_path).convert("L")) > 0
    except OSError as e:
        raise InputError(f"{path}: unreadable frame or mask ({e})") from None
    for p, a in ((frame_path, image), (mask_path, mask)):
        if a.shape[:2] != flow.shape[:2]:
            raise InputError(f"{p}: size {a.shape[1]}x{a.shape[0]} differs from flow.npy's "
                             f"{flow.shape[1]}x{flow.shape[0]}")
    return image, flow.astype(np.float32), mask


def _is_clip_entry(path):
    from cine_jax.train.clips import FRAME_EXTENSIONS

    name = os.path.basename(path)
    if name.startswith("."):
        return False
    if os.path.isdir(path):
        return True
    return os.path.isfile(path) and not name.lower().endswith(FRAME_EXTENSIONS + (".json", ".npy", ".txt", ".md"))


@functools.lru_cache(maxsize=8)
def _load_clips_cached(root, preset, ratio):
    from cine_jax.io import InputError
    from cine_jax.train import clips as clips_lib

    if not os.path.isdir(root):
        raise InputError(f"{root}: data folder not found")
    entries = sorted(os.path.join(root, n) for n in os.listdir(root))
    entries = [e for e in entries if _is_clip_entry(e) and os.path.basename(e) not in ("train", "test")]
    out = []
    for path in entries:
        if os.path.isfile(os.path.join(path, "flow.npy")) or os.path.isfile(os.path.join(path, "mask.png")):
            image, flow, mask = _read_procedural(path)
        else:
            frames = clips_lib.read_clip(path)
            flow = clips_lib.eulerian_flow(frames, preset)
            mask = clips_lib.motion_mask(flow, ratio)
            image = frames[0]
        if not np.any(mask) or not np.any(np.abs(flow[mask]) > 0):
            raise InputError(f"{path}: the clip has no moving pixel (a motion hint needs motion)")
        if min(flow.shape[:2]) < 16:
            raise InputError(f"{path}: clip is {flow.shape[1]}x{flow.shape[0]}, both sides must be >= 16 px")
        out.append({"name": path, "image": image, "flow": flow, "mask": mask})
    if not out:
        raise InputError(f"{root}: no clips found (expected `cine-jax make-data` clip folders, folders of frames "
                         "or video files)")
    return tuple(out)


def load_clips(data_dir, config, split="train"):
    """The clips of `split` as a tuple of dict(name, image uint8 [h, w, 3], flow [h, w, 2], mask bool [h, w])
    (cached per folder: real clips' flow is estimated once)."""
    root = os.path.abspath(split_dir(data_dir, split))
    return _load_clips_cached(root, str(config.motion.flow_preset), float(config.motion.mask_ratio))


def motion_sample(clip, rng, size, k_range):
    """One training sample of `clip` with hints drawn from `rng` (numpy Generator).

    Returns dict(inputs [S, S, 6] float32 (official network input), flow [S, S, 2] float32 target in px/frame
    at S x S, hints (list of io.Hint at the clip's size), sigma).
    """
    from cine_jax.train.clips import sample_hints
    from kernels.sampling import resize

    h, w = clip["flow"].shape[:2]
    hints = sample_hints(clip["flow"], clip["mask"], rng, k_range)
    sigma = official_hint_sigma(h, len(hints), rng)
    starts = np.array([x.start for x in hints], np.float64)
    vectors = np.array([x.vector for x in hints], np.float64)
    inputs = motion_net_inputs(clip["image"], clip["mask"], starts, vectors, sigma, size)[0]
    target = resize(jnp.asarray(clip["flow"] * np.array([size / w, size / h], np.float32)), (size, size), "bilinear")
    return {"inputs": np.asarray(inputs, np.float32), "flow": np.asarray(target, np.float32), "hints": hints,
            "sigma": sigma}


def batches(data_dir, config, split, seed, start_step):
    """Host batches dict(inputs [B, S, S, 6], flow [B, S, S, 2]) for steps start_step, start_step + 1, ...;
    sample i of step s uses np.random.default_rng([seed, s, i]) (clip, hints, sigma)."""
    mc = config.motion
    clips = load_clips(data_dir, config, split)
    size, bs = int(mc.size), int(config.loop.batch_size)
    k_range = (int(mc.hints_min), int(mc.hints_max))
    step = int(start_step)
    while True:
        items = []
        for i in range(bs):
            rng = np.random.default_rng([int(seed), step, i])
            clip = clips[int(rng.integers(len(clips)))]
            # one BLAS/OpenMP thread for K-means: 30x faster on a loaded 2-core machine (the default thread
            # pool spins), and the same result whatever the machine's thread count
            with threadpool_limits(1):
                items.append(motion_sample(clip, rng, size, k_range))
        yield {"inputs": np.stack([s["inputs"] for s in items]), "flow": np.stack([s["flow"] for s in items])}
        step += 1


# ------------------------------------------------------------------------------------------------
# networks, step
# ------------------------------------------------------------------------------------------------


def check_motion_config(config):
    mc = config.motion
    if int(mc.size) % SIZE_MULTIPLE:
        raise ValueError(f"config key 'motion.size' = {mc.size!r}: must be a multiple of {SIZE_MULTIPLE} (eight "
                         "stride-2 convolutions)")
    if int(mc.hints_min) > int(mc.hints_max):
        raise ValueError(f"config keys 'motion.hints_min' = {mc.hints_min} and 'motion.hints_max' = {mc.hints_max}: "
                         "need hints_min <= hints_max")


def networks(config):
    """(generator, discriminator) modules of the config."""
    mc, dc = config.motion, config.disc
    gen = SPADEUnet4MaskMotion(num_filters=int(mc.num_filters), spade_hidden=int(mc.spade_hidden),
                               div_flow=float(mc.div_flow), power_iteration=True)
    disc = MultiscaleDiscriminator(num_d=int(dc.num_d), ndf=int(dc.ndf), n_layers=int(dc.n_layers),
                                   in_channels=8 if dc.conditional else 2)
    return gen, disc


def numpy_init(module, key, *inputs):
    """Fresh variables of a conv network (the motion net, the discriminator), drawn in NumPy.

    The same distributions as the modules' own initialisers (PyTorch's defaults): conv weights and biases
    U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with fan_in = k * k * in, spectral-norm u, v normalised Gaussians.
    Shapes come from jax.eval_shape(module.init); the values from np.random.default_rng(key data), a pure
    function of `key`. Why not module.init: XLA:CPU took ~3 minutes to compile (or run op by op) the motion
    net's init on this project's machine, for numbers NumPy draws in milliseconds.
    """
    shapes = jax.eval_shape(module.init, key, *inputs)
    try:
        seed = [int(k) for k in np.asarray(jax.random.key_data(key)).ravel()]
    except jax.errors.TracerArrayConversionError:
        # traced (the loop's jax.eval_shape of the stage's init, for restoring a checkpoint): shapes only
        return jax.tree.map(lambda v: jnp.zeros(v.shape, v.dtype), shapes)
    rng = np.random.default_rng(seed)

    def fill(tree, fan_in=None):
        out = {}
        kernels = [v for k, v in tree.items() if k in ("kernel", "weight_orig")]
        fan = int(np.prod(kernels[0].shape[:3])) if kernels else fan_in
        for k, v in tree.items():
            if hasattr(v, "items"):
                out[k] = fill(v)
            elif k in ("kernel", "weight_orig", "bias"):
                bound = 1.0 / np.sqrt(fan)
                out[k] = jnp.asarray(rng.uniform(-bound, bound, v.shape).astype(v.dtype))
            elif k in ("weight_u", "weight_v"):
                u = rng.normal(size=v.shape)
                out[k] = jnp.asarray((u / max(np.linalg.norm(u), 1e-12)).astype(v.dtype))
            else:
                raise ValueError(f"numpy_init: no rule for variable {k!r} of {type(module).__name__}")
        return out

    return {col: fill(tree) for col, tree in shapes.items()}


def make_stage(config):
    """The motion Stage of config (configs/cine_train.py) for cine_jax.train.loop.run."""
    check_motion_config(config)
    mc = config.motion
    gen, disc = networks(config)
    conditional = bool(config.disc.conditional)
    tx_g = optax.adam(float(mc.lr_g), b1=float(mc.b1), b2=float(mc.b2))
    tx_d = optax.adam(float(mc.lr_d), b1=float(mc.b1), b2=float(mc.b2))
    lam_gan, lam_fm, lam_epe = float(mc.lambda_gan), float(mc.lambda_fm), float(mc.lambda_epe)

    def d_input(x, flow):
        return jnp.concatenate([x, flow], axis=-1) if conditional else flow

    def init(key, batch):
        kg, kd = jax.random.split(key)
        x = jnp.asarray(batch["inputs"][:1])
        gv = numpy_init(gen, kg, x)
        dv = numpy_init(disc, kd, d_input(x, jnp.asarray(batch["flow"][:1])))
        return {"g": gv["params"], "g_spectral": gv["spectral"], "d": dv["params"], "d_spectral": dv["spectral"],
                "opt_g": tx_g.init(gv["params"]), "opt_d": tx_d.init(dv["params"])}

    def step(state, batch, key):
        del key  # the motion step has no randomness of its own (the hints are drawn with the batch)
        x, gt = batch["inputs"], batch["flow"]
        dvars = {"params": state["d"], "spectral": state["d_spectral"]}

        def discriminate(v, flow):
            # SPADE's discriminate(): one D call on cat([fake, real]) along the batch, split afterwards
            # (instance norm is per sample, so this equals two calls)
            both = disc.apply(v, d_input(jnp.concatenate([x, x]), jnp.concatenate([flow, gt])))
            n = x.shape[0]
            return ([[f[:n] for f in scale] for scale in both], [[f[n:] for f in scale] for scale in both])

        def g_loss(gp):
            pred = gen.apply({"params": gp, "spectral": state["g_spectral"]}, x)
            fake, real = discriminate(dvars, pred)
            gan, fm = losses.hinge_g(fake), losses.feature_matching(fake, real)
            epe = losses.end_point_error(pred, gt)
            total = lam_gan * gan + lam_fm * fm + lam_epe * epe
            return total, (pred, {"g_gan": gan, "g_fm": fm, "epe": epe})

        (loss, (pred, aux)), g_grads = jax.value_and_grad(g_loss, has_aux=True)(state["g"])
        fake_flow = jax.lax.stop_gradient(pred)

        def d_loss(dp):
            fake, real = discriminate({"params": dp, "spectral": state["d_spectral"]}, fake_flow)
            return losses.hinge_d(real, fake), (jnp.mean(real[0][-1]), jnp.mean(fake[0][-1]))

        (dl, (d_real, d_fake)), d_grads = jax.value_and_grad(d_loss, has_aux=True)(state["d"])
        ug, opt_g = tx_g.update(g_grads, state["opt_g"], state["g"])
        ud, opt_d = tx_d.update(d_grads, state["opt_d"], state["d"])
        new = {
            "g": optax.apply_updates(state["g"], ug), "d": optax.apply_updates(state["d"], ud),
            # torch's training-mode spectral norm stores the u, v of the forward that used these weights
            "g_spectral": power_iterate(state["g"], state["g_spectral"]),
            "d_spectral": power_iterate(state["d"], state["d_spectral"]),
            "opt_g": opt_g, "opt_d": opt_d,
        }
        metrics = {"loss": loss, **aux, "d_loss": dl, "d_real": d_real, "d_fake": d_fake}
        return new, metrics

    apply_g = jax.jit(gen.apply)

    def samples(state, batch):
        from cine_jax import viz

        x = np.asarray(batch["inputs"][:1])
        pred = np.asarray(apply_g({"params": state["g"], "spectral": state["g_spectral"]}, x))[0]
        gt = np.asarray(batch["flow"][0])
        top = float(max(np.abs(gt).max(), 1e-3))
        img = np.clip((x[0, ..., :3] + 1.0) / 2.0, 0, 1)
        tiles = [img, viz.flow_to_color(x[0, ..., 4:6], top), viz.flow_to_color(pred, top),
                 viz.flow_to_color(gt, top)]
        row = np.concatenate([np.asarray(t, np.float32)[..., :3] for t in tiles], axis=1)
        return {"image_hints_pred_gt": (np.clip(row, 0, 1) * 255).round().astype(np.uint8)}

    def export(state, out_dir):
        from cine_jax.nets.checkpoints import save_converted

        variables = {"params": jax.device_get(state["g"]), "spectral": jax.device_get(state["g_spectral"])}
        save_converted(out_dir, "motion", gen, variables,
                       source={"trained_by": "cine-jax train motion", "size": int(mc.size)})

    return Stage("motion", init, step, samples, export, batches)


# ------------------------------------------------------------------------------------------------
# held-out evaluation
# ------------------------------------------------------------------------------------------------


def evaluate_epe(weights_dir, data_dir, config, split="test", seed=0, samples_per_clip=2, motion_size=None):
    """Held-out EPE (px/frame at the clip's size, over its moving pixels) of the trained net against the
    weight-free hint densification (cine_jax.motion.flow_from_annotations) given the SAME hints.

    Both use the pipeline's defaults: sigma = H / K (deterministic), the official 15x15 masked box blur,
    flow_scale 1; the net runs through nets.motion.predict_flow at motion_size (default config.motion.size)
    with the clip's GT mask. Returns dict(net, baseline (mean EPE), per_sample lists, num_samples).
    """
    from cine_jax import motion as motion_lib
    from cine_jax.nets.checkpoints import load_converted
    from cine_jax.nets.motion import predict_flow
    from cine_jax.train.clips import sample_hints

    module, variables = load_converted(os.path.join(weights_dir, "motion"), "SPADEUnet4MaskMotion")
    apply_fn = jax.jit(module.apply)
    size = int(motion_size or config.motion.size)
    clips = load_clips(data_dir, config, split)
    k_range = (int(config.motion.hints_min), int(config.motion.hints_max))
    net, base = [], []
    for ci, clip in enumerate(clips):
        h, w = clip["flow"].shape[:2]
        m = clip["mask"]
        for j in range(int(samples_per_clip)):
            rng = np.random.default_rng([int(seed), ci, j])
            with threadpool_limits(1):
                hints = sample_hints(clip["flow"], m, rng, k_range)
            starts = np.array([x.start for x in hints])
            vectors = np.array([x.vector for x in hints])
            sigma = h / len(hints)
            pred = np.asarray(predict_flow(module, variables, clip["image"], m, starts, vectors, sigma,
                                           out_size=(h, w), size=size, apply_fn=apply_fn))
            bl = np.asarray(motion_lib.flow_from_annotations(m.astype(np.float32), hints, (h, w), sigma=0.0,
                                                             smooth_ksize=15))
            for est, acc in ((pred, net), (bl, base)):
                acc.append(float(np.mean(np.linalg.norm(est[m] - clip["flow"][m], axis=-1))))
    return {"net": float(np.mean(net)), "baseline": float(np.mean(base)), "per_sample_net": net,
            "per_sample_baseline": base, "num_samples": len(net)}
