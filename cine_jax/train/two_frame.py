"""The official two-frame training render (issue 12, render stage), as a pure function over cine_jax's renderer.

At inference both sides of the symmetric animation are point clouds of the one input photo. In training the
official code (`render_rgbda_layers_with_scene_flow`, reference/cinemagraphy.md section 4 "Training path") takes
two REAL frames of a clip: the forward side is the LDI of the start frame (time 0) moved forward by the Euler
integral of M for t steps, the backward side is the LDI of the end frame (time N) moved by the integral of -M for
N - t steps; both are splatted into the target camera, blended with the time weight (Eq. 4, or the decoder's
learned alpha) and decoded. The target is the real frame t seen from that camera (here: the procedural
generator's exact novel view at time t, `procedural.make_clip(...)["timed_views"]`).

Nothing here renders on its own: the two clouds are concatenated into ONE scene whose points carry a side id;
`cine_jax.render.render_frame` splats the forward side with valid_f = (start-frame points) and the backward side
with valid_b = (end-frame points), so the splat, the Eq. 4 / learned blend, the per-point disparity channel of the
learned decoder and the decoder call are exactly the inference ones. The motion is integrated by
`cine_jax.motion.euler_integrate` (one scan of N steps over the per-layer fields of both LDIs: M for the start
frame's layers, -M for the end frame's, `scene.layer_flows`), and t selects the step, so t may be a traced value
(one compiled step for every t of a batch).

Host side (`prepare`, NumPy, once per sample): the point clouds (`scene.build_point_cloud`), their layer fields,
and what the learned feature net needs (the LDIs' RGBA, visible masks and eroded visible masks, and each point's
index into the stacked per-layer feature maps), padded to static shapes. Device side (`render_two_frame`,
traceable, differentiable w.r.t. the feature net and decoder variables).
"""

import cv2
import jax
import jax.numpy as jnp
import numpy as np

from cine_jax import layering, motion
from cine_jax import render as render_lib
from cine_jax import scene as scene_lib


def single_layer_ldi(image, depth):
    """A one-layer LDI of a frame (no layering / inpainting): every pixel visible, alpha 1. image [H, W, 3] in
    [0, 1], depth [H, W] z-depth > 0."""
    image = np.asarray(image, np.float32)
    depth = np.asarray(depth, np.float32)
    if image.ndim != 3 or image.shape[-1] != 3 or depth.shape != image.shape[:2]:
        raise ValueError(f"single_layer_ldi: image must be [H, W, 3] and depth [H, W] of the same size, got "
                         f"{image.shape} and {depth.shape}")
    if not np.all(np.isfinite(depth)) or np.any(depth <= 0):
        raise ValueError("single_layer_ldi: depth must be finite and > 0")
    rgba = np.concatenate([image, np.ones(depth.shape + (1,), np.float32)], -1)[None]
    edges = np.array([0.0, float(depth.max()) * 1.0001], np.float64)
    return layering.LDI(rgba=rgba, depth=depth[None], visible=np.ones((1,) + depth.shape, bool), edges=edges)


def _pad_cloud(cloud, capacity):
    n = cloud.uv.shape[0]
    if n > capacity:  # build_point_cloud already capped the points at `capacity`
        raise AssertionError(n)
    pad = capacity - n

    def p(a, value=0):
        return np.concatenate([a, np.full((pad,) + a.shape[1:], value, a.dtype)])

    return dict(uv=p(cloud.uv), z=p(cloud.z, 1), features=p(cloud.features), layer=p(cloud.layer),
                slope=p(cloud.slope), valid=p(cloud.valid))


def prepare(start_ldi, end_ldi, flow, K, *, num_layers=None, capacity=None, depth_unit=None, alpha_threshold=0.5,
            order_eps=1.05, edge_threshold=0.04, visible_erode=5, diffuse_iters=7, diffuse_ksize=15):
    """Host-side arrays of one training sample (static shapes) for `render_two_frame`.

    start_ldi / end_ldi: layering.LDI of the start (time 0) and end (time N) frames, the same size; both are
      padded to `num_layers` layers (default: the larger count).
    flow: [H, W, 2] Eulerian flow M (px/frame) of the clip; the start LDI's layers move with M, the end LDI's
      with -M (each layer's field from scene.layer_flows).
    K: [3, 3] intrinsics of the frames (unprojection).
    capacity: points per side (default num_layers x H x W, every possible point: no point is ever dropped).
    depth_unit: the scene's nearest depth (render.render_frame), default the nearest start-frame depth.
    The other arguments are the `scene` / `layering` config values of configs/cinemagraph.py (official defaults).

    Returns a dict of NumPy arrays: uv [P, 2], z [P], slope [P], layer [P] (index into fields), side [P] int32
    (0 start, 1 end), valid [P], rgba [P, 4], point_index [P] (row of the point in the stacked per-layer maps
    [2 L H W]), fields [2L, H, W, 2], ldi_rgba [2, L, H, W, 4], visible [2, L, H, W], keep [2, L, H, W] (eroded
    visible: where a point keeps its own learned feature), K_ref [3, 3], depth_unit [] ; P = 2 x capacity.
    """
    h, w = start_ldi.shape
    if tuple(end_ldi.shape) != (h, w):
        raise ValueError(f"prepare: the start and end LDIs differ in size: {(h, w)} vs {tuple(end_ldi.shape)}")
    flow = np.asarray(flow, np.float32)
    if flow.shape != (h, w, 2):
        raise ValueError(f"prepare: flow must be [H, W, 2] = [{h}, {w}, 2], got {flow.shape}")
    L = int(num_layers or max(start_ldi.num_layers, end_ldi.num_layers))
    ldis = [start_ldi.pad_to(L), end_ldi.pad_to(L)]
    cap = int(capacity or L * h * w)
    kernel = np.ones((visible_erode, visible_erode), np.uint8)
    sides, fields = [], []
    for s, (ldi, sign) in enumerate(zip(ldis, (1.0, -1.0))):
        cloud = scene_lib.build_point_cloud(ldi, alpha_threshold=alpha_threshold, capacity=cap, order_eps=order_eps,
                                            edge_threshold=edge_threshold)
        c = _pad_cloud(cloud, cap)
        c["layer"] = c["layer"] + s * L
        ui, vi = c["uv"][:, 0].astype(np.int64), c["uv"][:, 1].astype(np.int64)
        c["point_index"] = (c["layer"] * h + vi) * w + ui  # layer already offset by s * L
        c["side"] = np.full(cap, s, np.int32)
        sides.append(c)
        fields.append(sign * scene_lib.layer_flows(flow, ldi, visible_erode=visible_erode, diffuse_iters=diffuse_iters,
                                                   diffuse_ksize=diffuse_ksize, edge_threshold=edge_threshold))
    out = {k: np.concatenate([sides[0][k], sides[1][k]]) for k in ("uv", "z", "layer", "slope", "valid",
                                                                  "point_index", "side")}
    out["rgba"] = np.concatenate([sides[0]["features"], sides[1]["features"]])
    out["layer"] = out["layer"].astype(np.int32)
    out["point_index"] = out["point_index"].astype(np.int32)
    out["fields"] = np.concatenate(fields).astype(np.float32)
    out["ldi_rgba"] = np.stack([ldi.rgba for ldi in ldis]).astype(np.float32)
    out["visible"] = np.stack([ldi.visible for ldi in ldis])
    out["keep"] = np.stack([cv2.erode(v.astype(np.uint8), kernel) for ldi in ldis for v in ldi.visible]
                           ).reshape(2, L, h, w).astype(bool)
    out["K_ref"] = np.asarray(K, np.float32)
    near = float(start_ldi.depth[start_ldi.visible].min())
    out["depth_unit"] = np.float32(depth_unit if depth_unit is not None else near)
    return out


def learned_point_features(feature_apply, variables, sample):
    """Per-point [RGBA, learned features] of both sides, traceable (the training twin of
    learned.ResUNetFeatures): the feature net on each side's LDI stack, upsampled bilinearly (align_corners=True)
    to the image; outside its eroded visible region a point takes the mask-weighted composite of the visible
    layers' features (learned.composite_visible_features, official compute_scene_flow_for_motion).

    The two sides are one call, jax.vmap over the side axis (one program in the step's HLO); each side keeps its
    own BatchNorm statistics (a batch of its L layers), exactly as two separate calls.
    feature_apply(variables, rgba [L, H, W, 4]) -> [L, h', w', C]; sample: `prepare`'s arrays (jnp or np).
    Returns [P, 4 + C].
    """
    from cine_jax.learned import _adaptive_avg_pool_matrix
    from cine_jax.nets import features as feats_lib
    from kernels.sampling import resize

    ldi_rgba = jnp.asarray(sample["ldi_rgba"])
    _, L, h, w, _ = ldi_rgba.shape

    def one_side(rgba, visible, keep):
        # the feature net sees the L layers of ONE side (its BatchNorm uses that stack's statistics, reference
        # section 3): vmapped over the side axis below, never one joint batch of both sides
        small = feature_apply(variables, rgba).astype(jnp.float32)  # [L, h', w', C]
        own = feats_lib.upsample_features(small, (h, w))
        m = visible.astype(jnp.float32)
        ph = jnp.asarray(_adaptive_avg_pool_matrix(h, small.shape[1]))
        pw = jnp.asarray(_adaptive_avg_pool_matrix(w, small.shape[2]))
        m_ds = jnp.einsum("ah,lhw,bw->lab", ph, m, pw)
        num = jnp.einsum("lhwc,lhw->hwc", small, m_ds)
        den = m_ds.sum(0)[..., None]
        up = resize(jnp.concatenate([num, den], -1), (h, w), "bilinear", align_corners=True)
        comp = up[..., :-1] / jnp.maximum(up[..., -1:], 1e-6)
        k = keep.astype(jnp.float32)[..., None]
        return k * own + (1.0 - k) * comp[None]

    maps = jax.vmap(one_side)(ldi_rgba, jnp.asarray(sample["visible"]), jnp.asarray(sample["keep"]))  # [2, L, ...]
    flat = maps.reshape(2 * L * h * w, -1)
    learned = flat[jnp.asarray(sample["point_index"])]
    return jnp.concatenate([jnp.asarray(sample["rgba"], jnp.float32), learned], axis=-1)


def render_two_frame(sample, t, num_steps, pose, K, image_size, opts, decoder, *, features=None,
                     decoder_variables=None, border="clamp"):
    """The training render of frame t (0 <= t <= N = num_steps) seen from (pose, K): traceable, pure.

    sample: `prepare`'s arrays; t: int (may be traced); num_steps: static N, the end frame's index;
    pose [4, 4] world-to-camera (world = the frames' camera), K [3, 3]; image_size (H, W) static;
    opts: render.render_options(config); decoder: a render.DECODERS decoder (IdentityDecoder, or
    learned.ImgDecoderRenderer whose `decode_sides` gets `decoder_variables`); features: per-point features
    [P, C] RGBA first (default the points' RGBA; `learned_point_features` for the feature net).
    Time weight t / N: t = 0 uses only the start frame's side, t = N only the end frame's.
    Returns render.render_frame's dict (rgb [H, W, 3], features, depth, alpha, weight_forward, covered, ...).
    """
    if int(num_steps) != num_steps or num_steps < 1:
        raise ValueError(f"render_two_frame: num_steps (the end frame's index N) must be an int >= 1, got {num_steps}")
    uv = jnp.asarray(sample["uv"], jnp.float32)
    integ = motion.euler_integrate(sample["fields"], uv, int(num_steps), layer=sample["layer"], border=border)
    t = jnp.clip(jnp.asarray(t, jnp.int32), 0, num_steps)
    side = jnp.asarray(sample["side"])
    valid = jnp.asarray(sample["valid"], bool)
    start, end = valid & (side == 0), valid & (side == 1)
    disp_f = jnp.where(start[:, None], integ["displacement"][t], 0.0)
    disp_b = jnp.where(end[:, None], integ["displacement"][num_steps - t], 0.0)
    valid_f = start & integ["valid"][t]
    valid_b = end & integ["valid"][num_steps - t]
    feats = jnp.asarray(sample["rgba"], jnp.float32) if features is None else features
    scene = {"uv": uv, "z": jnp.asarray(sample["z"], jnp.float32), "features": feats,
             "slope": jnp.asarray(sample["slope"], jnp.float32), "K_ref": jnp.asarray(sample["K_ref"], jnp.float32),
             "depth_unit": jnp.asarray(sample["depth_unit"], jnp.float32)}
    if decoder_variables is not None:
        scene["decoder_variables"] = decoder_variables
    time = t.astype(jnp.float32) / jnp.float32(num_steps)
    return render_lib.render_frame(scene, disp_f, disp_b, valid_f, valid_b, time, jnp.asarray(pose, jnp.float32),
                                   jnp.asarray(K, jnp.float32), tuple(image_size), opts, decoder)

