"""Rendering a cinemagraph frame: splat both animated clouds, blend them (Eq. 4-6), decode to RGB.

For frame t of N seen from camera (pose_t, K_t):

1. the forward cloud is displaced by F(0->t) and the backward cloud by F(0->t-N) (scene.py); both are
   moved into the target camera and splatted with kernels.splat.splat_points, giving features F_f, F_b,
   depth D_f, D_b and coverage alpha a_f, a_b. Radii adapt to depth as the official renderer
   (`adaptive_pts_radius`): r = r0 * z_reference / z_target. The soft z-test is surface aware (each point
   carries its surface's depth slope, scene.PointCloud.slope) and the feature kernel is bilinear with
   the width of the surface's point spacing in the view (config render.splat_kernel, slope_slack);
2. Eq. 4: W = (1 - t/N) a_f e^{-b D_f} / ((1 - t/N) a_f e^{-b D_f} + (t/N) a_b e^{-b D_b}), where a is the
   splat coverage times the splatted layer alpha and D is z-depth in units of the scene's nearest depth
   (`depth_unit`: 1 for estimated depth, the nearest depth in metres for metric depth). Where both sides
   are empty W = 1 - t/N, so frame N equals frame 0 exactly (seamless loop).
   Eq. 5-6: F_t = W F_f + (1 - W) F_b, D_t = W D_f + (1 - W) D_b;
3. a decoder maps (F_t, D_t) to RGB: `IdentityDecoder` reads the RGB channels of RGBA features and fills
   pixels no point reached by push-pull interpolation; the learned decoder of the paper plugs in through
   the same call signature.

One jitted function renders a chunk of frames; the chunk is split over the devices of a Mesh with
`jax.shard_map` (each device renders its frames sequentially with lax.map, which bounds memory to one
frame's splat buffers per device).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from cine_jax import scene as scene_lib
from cine_jax.registry import Registry
from kernels import camera, splat
from kernels.mathx import materialize, safe_div


def blend_weights(alpha_f, depth_f, alpha_b, depth_b, time, beta=1.0):
    """Eq. 4 weight W of the forward side, [H, W], computed stably.

    alpha_*: [H, W] in [0, 1]; depth_*: [H, W] z-depth (0 where empty); time: t / N in [0, 1].
    Depths are shifted by their per-pixel minimum before exponentiating (the ratio is unchanged) so
    far scenes do not underflow.
    """
    m = jnp.minimum(jnp.where(alpha_f > 0, depth_f, jnp.inf), jnp.where(alpha_b > 0, depth_b, jnp.inf))
    m = jnp.where(jnp.isfinite(m), m, 0.0)
    wf = (1.0 - time) * alpha_f * jnp.exp(-beta * jnp.clip(depth_f - m, 0.0, 80.0))
    wb = time * alpha_b * jnp.exp(-beta * jnp.clip(depth_b - m, 0.0, 80.0))
    total = wf + wb
    return jnp.where(total > 1e-12, safe_div(wf, total, 1e-12), 1.0 - time)


def _upsample2_axis(x, axis):
    """x2 linear upsampling along `axis` with half-pixel centres and replicated borders: output 2i is
    0.75 x[i] + 0.25 x[i - 1], output 2i + 1 is 0.75 x[i] + 0.25 x[i + 1]."""
    n = x.shape[axis]
    prev = jnp.concatenate([lax.slice_in_dim(x, 0, 1, axis=axis), lax.slice_in_dim(x, 0, n - 1, axis=axis)], axis)
    nxt = jnp.concatenate([lax.slice_in_dim(x, 1, n, axis=axis), lax.slice_in_dim(x, n - 1, n, axis=axis)], axis)
    even = 0.75 * x + 0.25 * prev
    odd = 0.75 * x + 0.25 * nxt
    out = jnp.stack([even, odd], axis=axis + 1)
    return out.reshape(x.shape[:axis] + (2 * n,) + x.shape[axis + 1:])


def _upsample2(x, shape):
    """Bilinear x2 upsampling [h, w, C] -> [2h, 2w, C] = shape (half-pixel centres, as PyTorch's
    align_corners=False and jax.image.resize "linear"), separable: a few adds per pixel instead of
    resize's dense interpolation matrices."""
    assert tuple(shape) == (2 * x.shape[0], 2 * x.shape[1], x.shape[2]), (x.shape, shape)
    return _upsample2_axis(_upsample2_axis(x, 0), 1)


def _relax(col, img, wgt, iters):
    """`iters` Jacobi steps of the membrane (Laplace) equation on the unknown part: each pixel becomes
    w img + (1 - w) mean(4 neighbours), borders replicated."""
    for _ in range(iters):
        # materialised: each pixel is read by 4 neighbours (mathx.materialize)
        p = jnp.pad(materialize(col), ((1, 1), (1, 1), (0, 0)), mode="edge")
        avg = 0.25 * (p[:-2, 1:-1] + p[2:, 1:-1] + p[1:-1, :-2] + p[1:-1, 2:])
        col = wgt[..., None] * img + (1.0 - wgt[..., None]) * avg
    return col


def push_pull_fill(image, valid, levels=8, relax_iters=2):
    """Fill pixels where `valid` is False by push-pull interpolation (Gortler et al. 1996), smoothly.

    image [H, W, C], valid [H, W] bool or weights in [0, 1]. Push: a pyramid of 2x2 weighted means,
    weights summed and clipped to 1 (a coarse pixel with any support counts as known). Pull, coarse to
    fine: c_l = w_l c_l + (1 - w_l) up(c_{l+1}) with `up` BILINEAR upsampling, then `relax_iters`
    Jacobi steps of the membrane equation on the unknown pixels of that level (a multigrid-style
    smoothing that makes the fill meet its border continuously). A filled region is a smooth
    interpolation of its surroundings with no block edges (a nearest-neighbour pull leaves 2^k-pixel
    squares). Valid pixels (weight 1) are returned unchanged. Static shapes: the image is padded to a
    multiple of 2^levels.
    """
    h, w, c = image.shape
    s = 2**levels
    hp, wp = -(-h // s) * s, -(-w // s) * s
    wgt = jnp.pad(jnp.clip(jnp.asarray(valid, jnp.float32), 0.0, 1.0), ((0, hp - h), (0, wp - w)))
    img = jnp.pad(materialize(image), ((0, hp - h), (0, wp - w), (0, 0)))
    pyramid = []
    col = img
    for _ in range(levels):
        pyramid.append((col, wgt))
        hh, ww = col.shape[0] // 2, col.shape[1] // 2
        num = (col * wgt[..., None]).reshape(hh, 2, ww, 2, c).sum((1, 3))
        den = wgt.reshape(hh, 2, ww, 2).sum((1, 3))
        col = safe_div(num, jnp.maximum(den, 1e-12)[..., None])
        wgt = jnp.minimum(den, 1.0)
    # the coarsest level: where nothing is known at all, the mean of the known pixels
    mean = safe_div((col * wgt[..., None]).sum((0, 1)), jnp.maximum(wgt.sum(), 1e-12))
    col = wgt[..., None] * col + (1.0 - wgt[..., None]) * mean
    for img_l, wgt_l in reversed(pyramid):
        up = _upsample2(col, img_l.shape)
        col = _relax(wgt_l[..., None] * img_l + (1.0 - wgt_l[..., None]) * up, img_l, wgt_l, relax_iters)
    return col[:h, :w]


class IdentityDecoder:
    """Decoder without weights: RGB = the blended RGB feature channels; empty pixels push-pull filled.

    Call signature shared with learned decoders: (features [H, W, C], depth [H, W], alpha [H, W],
    covered [H, W] bool) -> rgb [H, W, 3] in [0, 1].
    """

    def __init__(self, fill_holes=True, levels=8, relax_iters=2):
        self.fill_holes = fill_holes
        self.levels = levels
        self.relax_iters = relax_iters

    @classmethod
    def from_config(cls, config, seed=0):
        """From the `render` section of configs/cinemagraph.py (fill_holes, fill_levels, fill_relax)."""
        del seed
        return cls(fill_holes=bool(config.fill_holes), levels=int(config.fill_levels),
                   relax_iters=int(config.fill_relax))

    def __call__(self, features, depth, alpha, covered):
        rgb = features[..., :3]
        if self.fill_holes:
            rgb = push_pull_fill(rgb, covered, self.levels, self.relax_iters)
        return jnp.clip(rgb, 0.0, 1.0)


DECODERS = Registry("decoder")
DECODERS.register("identity", IdentityDecoder.from_config)


def _imgdecoder_from_config(**kwargs):
    from cine_jax import learned

    return learned.ImgDecoderRenderer.from_config(**kwargs)


# learned ImgDecoder; the factory takes the `models` section and section=the `render` section (learned.py).
# A decoder may also provide point_channels(z_f, z_b, valid_f, valid_b) -> per-point channels appended to the
# splatted features of each side, and decode_sides(side_f, side_b, time, variables) -> rgb, which
# render_frame then calls instead of decoder(features, depth, alpha, covered) (its `variables` attribute is
# passed through the jitted renderer as an argument).
DECODERS.register("imgdecoder", _imgdecoder_from_config)
# register_decoder(name, factory) / get_decoder(name, config=..., seed=...): a factory takes the `render`
# section of configs/cinemagraph.py and a seed and returns a callable with the decoder signature above (a
# learned decoder closes over its parameters; it is called inside the jitted renderer).
register_decoder = DECODERS.register
get_decoder = DECODERS.get


def _splat_side(points_ref, feats, slope, valid, pose, K, K_ref, image_size, opts):
    # materialised: the splat reads each point's coordinates from many per-tap kernels (mathx.materialize)
    pts = materialize(camera.transform_points(pose, points_ref))
    r0 = opts["point_radius"]
    zratio = points_ref[:, 2] / jnp.maximum(pts[:, 2], 1e-6)
    if opts["adaptive_radius"]:
        # official adaptive_pts_radius: scale by z before / z after the camera move
        radius = jnp.clip(r0 * zratio, 0.25, opts["max_radius"])
    else:
        radius = jnp.full(pts.shape[:1], r0, jnp.float32)
    # magnification: target pixels per source pixel around each point (depth ratio x focal ratio), the
    # spacing of a dense surface's points in this view
    mag = jnp.maximum(zratio * (K[0, 0] / K_ref[0, 0]), 1e-3)
    kw = {}
    if opts["slope_slack"] > 0 and slope is not None:
        # a neighbour of the same surface within the footprint (<= radius from the pixel, the pixel's
        # nearest point within the core, max(core_fraction * radius, sqrt(1/2) * spacing)) is at most
        # radius + core target pixels away, i.e. that many / mag source pixels: its depth differs by at
        # most slope per source pixel times that
        core = jnp.maximum(opts["core_fraction"] * radius, jnp.sqrt(0.5) * jnp.maximum(mag, 1.0))
        kw["depth_slack"] = opts["slope_slack"] * slope * (radius + core) / mag
    return splat.splat_points(
        pts,
        feats,
        K,
        image_size,
        radius,
        valid=valid,
        max_radius=opts["max_radius"] if opts["adaptive_radius"] else r0,
        point_block=opts.get("point_block") or None,
        near=opts["near"],
        depth_tau=opts["depth_tau"],
        core_fraction=opts["core_fraction"],
        sigma=opts["sigma"],
        kernel=opts["kernel"],
        kernel_width=mag,
        **kw,
    )


def render_frame(scene, disp_f, disp_b, valid_f, valid_b, time, pose, K, image_size, opts, decoder):
    """Render one frame. scene: dict(uv [P,2], z [P], features [P,C], K_ref [3,3] (the photo's K), and
    optionally depth_unit (the scene's nearest depth, default 1) and decoder_variables (a learned decoder's
    variables)); disp_* [P,2] pixel displacements of the
    forward/backward clouds; valid_* [P]; time = t/N; pose [4,4] (translation in the depth's units);
    K [3,3]. The decoder sees depth in units of depth_unit; the returned depth is in the depth's units.

    Returns dict(rgb [H,W,3], features [H,W,C], depth [H,W], alpha [H,W], weight_forward [H,W],
    covered [H,W] bool, num_behind, num_offscreen) with features/depth/alpha blended by Eq. 5-6.
    """
    uv, z, feats, K_ref = scene["uv"], scene["z"], scene["features"], scene["K_ref"]
    # Work in units of the scene's nearest depth (the official units): projection does not depend on the
    # scale, and the near plane and the blend's depth term are then the same for metres or normalised depth.
    unit = scene.get("depth_unit", 1.0)
    pose = pose.at[:3, 3].set(pose[:3, 3] / unit)
    slope = scene.get("slope")
    slope = None if slope is None else slope / unit
    pts_sides = [scene_lib.displaced_points(uv, z / unit, d, K_ref) for d in (disp_f, disp_b)]  # source z kept
    feat_sides = [feats, feats]
    point_channels = getattr(decoder, "point_channels", None)
    if point_channels is not None:  # per-frame point channels of a learned decoder (e.g. normalised disparity)
        zs = [camera.transform_points(pose, p)[:, 2] for p in pts_sides]
        ok = [v & (zz > opts["near"]) for v, zz in zip((valid_f, valid_b), zs)]
        extra = point_channels(zs[0], zs[1], ok[0], ok[1])
        feat_sides = [jnp.concatenate([feats, e.astype(feats.dtype)], axis=-1) for e in extra]
    out = []
    for pts, f_side, valid in zip(pts_sides, feat_sides, (valid_f, valid_b)):
        out.append(_splat_side(pts, f_side, slope, valid, pose, K, K_ref, image_size, opts))
    sf, sb = out
    # blend alpha: coverage times the splatted layer alpha (RGBA channel 3) when present
    af, ab = sf["alpha"], sb["alpha"]
    if feats.shape[-1] >= 4 and opts["use_feature_alpha"]:
        af = af * jnp.clip(sf["features"][..., 3], 0.0, 1.0)
        ab = ab * jnp.clip(sb["features"][..., 3], 0.0, 1.0)
    w = blend_weights(af, sf["depth"], ab, sb["depth"], time, opts["blend_beta"])
    # Where only one side has content, use it at full weight (the other side's features are 0) -- except
    # when its time weight is exactly 0 (the backward side at t = 0, the forward side at t = N), so that
    # frame N equals frame 0 exactly, holes included, as with the official normalised blend.
    has_f = sf["weight"] > 0
    has_b = sb["weight"] > 0
    only_f = has_f & ~has_b
    only_b = has_b & ~has_f
    # materialised: read by every channel of the blend below (mathx.materialize)
    w_eff = materialize(
        jnp.where(only_f, jnp.where(time < 1.0, 1.0, 0.0), jnp.where(only_b, jnp.where(time > 0.0, 0.0, 1.0), w)))
    feat = w_eff[..., None] * sf["features"] + (1 - w_eff[..., None]) * sb["features"]
    depth = w_eff * sf["depth"] + (1 - w_eff) * sb["depth"]
    alpha = w_eff * af + (1 - w_eff) * ab
    covered = (has_f & (w_eff > 0)) | (has_b & (w_eff < 1))
    if hasattr(decoder, "decode_sides"):  # a learned decoder that blends the two sides itself (official)
        rgb = decoder.decode_sides(sf, sb, time, scene.get("decoder_variables"))
    else:
        rgb = decoder(feat, depth, alpha, covered)
    depth = depth * unit
    return {
        "rgb": rgb,
        "features": feat,
        "depth": depth,
        "alpha": alpha,
        "weight_forward": w,
        "covered": covered,
        "num_behind": sf["num_behind"] + sb["num_behind"],
        "num_offscreen": sf["num_offscreen"] + sb["num_offscreen"],
    }


def render_options(config):
    """Static rendering options (a dict of python scalars, closed over by the jitted renderer) from the
    `render` config section."""
    r = config.render
    return dict(
        point_radius=float(r.point_radius),
        adaptive_radius=bool(r.adaptive_radius),
        max_radius=float(r.max_radius),
        near=float(r.near),
        depth_tau=float(r.depth_tau),
        core_fraction=float(r.core_fraction),
        sigma=float(r.splat_sigma),
        kernel=str(r.splat_kernel),
        slope_slack=float(r.slope_slack),
        blend_beta=float(r.blend_beta),
        use_feature_alpha=bool(r.use_feature_alpha),
        point_block=int(r.point_block),
    )


def make_mesh(devices=None):
    """A 1-D Mesh over the given (default: all) devices with axis name "data"."""
    devices = np.asarray(jax.devices() if devices is None else devices)
    return Mesh(devices, ("data",))


def make_chunk_renderer(scene, image_size, opts, decoder, mesh, outputs=("rgb",)):
    """A jitted function rendering a chunk of frames, split over the mesh's "data" axis.

    Returns f(disp_f [B,P,2], disp_b, valid_f [B,P], valid_b, time [B], poses [B,4,4], Ks [B,3,3]) ->
    dict of the requested outputs, each [B, ...], plus per-frame drop counts. B must be a multiple of the
    number of devices; each device renders its B / n frames one after another (lax.map).
    """
    keys = tuple(outputs)

    def per_device(scene_arrays, df, db, vf, vb, t, poses, Ks):
        def one(args):
            r = render_frame(scene_arrays, *args, image_size, opts, decoder)
            res = {k: r[k] for k in keys}
            res["num_behind"] = r["num_behind"]
            res["num_offscreen"] = r["num_offscreen"]
            return res

        return jax.lax.map(one, (df, db, vf, vb, t, poses, Ks))

    batch = P("data")
    sharded = jax.shard_map(
        per_device,
        mesh=mesh,
        in_specs=(P(), batch, batch, batch, batch, batch, batch, batch),
        out_specs=batch,
        check_vma=False,
    )
    replicated = NamedSharding(mesh, P())
    scene_dev = jax.device_put(scene, replicated)
    fn = jax.jit(sharded)
    return functools.partial(fn, scene_dev)
