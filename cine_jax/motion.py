"""Eulerian motion: user hints -> dense flow, post-processing, Euler integration, symmetric animation.

Paper section 3.2 (Eq. 1-3): the scene moves with a time-invariant Eulerian flow M [H, W, 2]
((dx, dy) in pixels per frame); frame t is reached by Euler integration
    F_{0->t}(x0) = F_{0->t-1}(x0) + M(x0 + F_{0->t-1}(x0)),   F_{0->0} = 0.
Facts about the official implementation are in shared/reference/cinemagraphy.md (sections 1 and 4);
where we deliberately differ from it, the docstring says so.

Pixel coordinates follow the house convention: pixel (row i, column j) has its centre at (u, v) = (j, i);
a hint's (x, y) is (u, v).

The per-frame hot path (`euler_integrate`, `symmetric_displacements`: the displacement of every point of
the scene, each following its layer's flow) is one `jax.lax.scan` under jit with static step counts.
Preprocessing (`hints_to_flow`, `smooth_flow`, `masked_diffuse`) is jnp too, so it runs on the
accelerator, but it is called once per image.
"""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from kernels.camera import pixel_grid
from kernels.sampling import BORDER_MODES, sample_bilinear

__all__ = [
    "MOTION_ESTIMATORS",
    "HintFlow",
    "box_sum",
    "euler_integrate",
    "flow_from_annotations",
    "hints_to_flow",
    "inside_image",
    "masked_diffuse",
    "parse_hints",
    "prepare_flow",
    "smooth_flow",
    "symmetric_displacements",
]


# ----------------------------------------------------------------------------------------------------
# validation helpers


def _check_size(size, name="size"):
    try:
        h, w = (int(s) for s in size)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name} must be a pair (H, W) of positive ints, got {size!r}") from e
    if h <= 0 or w <= 0:
        raise ValueError(f"{name} must be a pair (H, W) of positive ints, got {size!r}")
    return h, w


def _check_flow(flow, name="flow"):
    if flow.ndim != 3 or flow.shape[-1] != 2:
        raise ValueError(f"{name} must have shape [H, W, 2] (dx, dy), got {tuple(flow.shape)}")


def _mask_or_ones(mask, hw, name="mask"):
    """mask [H, W] as float32, or ones if mask is None."""
    if mask is None:
        return jnp.ones(hw, jnp.float32)
    mask = jnp.asarray(mask, jnp.float32)
    if mask.ndim == 3 and mask.shape[-1] == 1:
        mask = mask[..., 0]
    if mask.shape != tuple(hw):
        raise ValueError(f"{name} must have shape {tuple(hw)} (matching the flow/size), got {mask.shape}")
    return mask


def _check_ksize(ksize, name="ksize"):
    if int(ksize) != ksize or ksize < 1:
        raise ValueError(f"{name} must be a positive int, got {ksize!r}")
    return int(ksize)


# ----------------------------------------------------------------------------------------------------
# hints -> dense flow


def parse_hints(hints):
    """Normalise motion hints to (starts [K, 2], vectors [K, 2]) float64 NumPy arrays.

    Each hint may be
      - an object with `.start` (x, y) and `.vector` (dx, dy) attributes,
      - an object with `.start` and `.end` (x, y) attributes: vector = end - start, so `end` must already
        be expressed so that end - start is the per-frame displacement (cine_jax.io's Hint divides the
        labelme line by the official 50 frames; if it exposes `.vector`, that is used instead),
      - a pair (start, vector) of 2-sequences (a [K, 2, 2] array works too).
    Coordinates are working-size pixels (x = column, y = row); vectors are pixels per frame.
    """
    if hints is None:
        raise ValueError("hints: at least one motion hint is needed, got None")
    starts, vectors = [], []
    for k, h in enumerate(hints):
        if hasattr(h, "start") and hasattr(h, "vector"):
            s, v = np.asarray(h.start, np.float64), np.asarray(h.vector, np.float64)
        elif hasattr(h, "start") and hasattr(h, "end"):
            s = np.asarray(h.start, np.float64)
            v = np.asarray(h.end, np.float64) - s
        else:
            try:
                s, v = (np.asarray(x, np.float64) for x in h)
            except (TypeError, ValueError) as e:
                raise ValueError(
                    f"hints[{k}] must be (start (x, y), vector (dx, dy)) or have .start/.end, got {h!r}"
                ) from e
        if s.shape != (2,) or v.shape != (2,):
            raise ValueError(f"hints[{k}]: start and vector must be 2-vectors, got {s.shape}, {v.shape}")
        if not (np.all(np.isfinite(s)) and np.all(np.isfinite(v))):
            raise ValueError(f"hints[{k}] has non-finite coordinates: start {s}, vector {v}")
        starts.append(s)
        vectors.append(v)
    if not starts:
        raise ValueError("hints: at least one motion hint is needed, got an empty list")
    return np.stack(starts), np.stack(vectors)


def hints_to_flow(hints, mask, size, sigma=0.0):
    """Densify sparse motion hints into an Eulerian flow [H, W, 2] float32 (pixels per frame).

    Official (demo.py): every pixel gets the Gaussian-weighted average of the K hint vectors, with weight
    exp(-(d / sigma)^2) normalised by the sum of the weights, d = distance from the pixel centre to the
    hint's START point; the field is then multiplied by the mask.

    We evaluate the normalised weights as a softmax over the K logits -(d / sigma)^2. That is the same
    quantity, but it stays defined far from every hint, where all raw weights underflow to 0 and the
    official ratio would be 0 / 0: there the nearest hint dominates.

    hints: see `parse_hints` (working-size pixels, vectors in px/frame).
    mask: [H, W] in [0, 1] (fractional edges allowed) or None (no masking).
    size: (H, W) working size.
    sigma: Gaussian scale in pixels. 0 means H / K (K = number of hints): the official draws it at random
      from randint(H // (2K), H // (K / 2)); H / K is a deterministic value from the middle of that range.
    """
    h, w = _check_size(size)
    starts, vectors = parse_hints(hints)
    if sigma is None or sigma == 0:
        sigma = h / len(starts)
    if not np.isfinite(sigma) or sigma <= 0:
        raise ValueError(f"sigma must be > 0 (or 0 for the default H / K), got {sigma!r}")
    mask = _mask_or_ones(mask, (h, w))
    grid = pixel_grid(h, w)  # [H, W, 2] (u, v)
    diff = grid[:, :, None, :] - jnp.asarray(starts, jnp.float32)  # [H, W, K, 2]
    logits = -jnp.sum(diff * diff, axis=-1) / jnp.float32(sigma * sigma)
    weights = jax.nn.softmax(logits, axis=-1)  # max-subtracted: never 0 / 0
    flow = weights @ jnp.asarray(vectors, jnp.float32)
    return (flow * mask[..., None]).astype(jnp.float32)


# ----------------------------------------------------------------------------------------------------
# box filtering, smoothing, diffusion


def box_sum(x, ksize):
    """Sum of x [H, W, C] over a ksize x ksize window with a zero border; returns [H, W, C].

    The window of output pixel i covers rows i - ksize//2 .. i - ksize//2 + ksize - 1 (OpenCV's anchor
    for both odd and even ksize). Separable: two 1-D window sums, O(ksize) per pixel.
    """
    k = _check_ksize(ksize)
    lo, hi = k // 2, k - 1 - k // 2
    x = jax.lax.reduce_window(x, 0.0, jax.lax.add, (k, 1, 1), (1, 1, 1), ((lo, hi), (0, 0), (0, 0)))
    return jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, k, 1), (1, 1, 1), ((0, 0), (lo, hi), (0, 0)))


def smooth_flow(flow, mask, ksize=15):
    """Official post-processing of the predicted flow: (flow * mask) -> ksize box blur -> * mask.

    The blur is normalised by ksize^2 with a zero border (cv2.blur(..., borderType=BORDER_CONSTANT)), so
    flow near the mask boundary is damped towards 0, which is what makes the boundary move smoothly.
    The official code wraps the blur in `for _ in range(7)`, but every pass blurs the same unblurred
    input, so it is effectively applied once; we apply it once.

    flow [H, W, 2] px/frame; mask [H, W] in [0, 1] or None (all ones); ksize 15 (official).
    """
    flow = jnp.asarray(flow, jnp.float32)
    _check_flow(flow)
    mask = _mask_or_ones(mask, flow.shape[:2])[..., None]
    k = _check_ksize(ksize)
    blurred = box_sum(flow * mask, k) / jnp.float32(k * k)
    return blurred * mask


def masked_diffuse(values, mask, iters=7, ksize=15, return_valid=False):
    """Extend values [H, W, C] from inside a mask outward by repeated normalised box filtering.

    Official scene-flow extension (`masked_diffuse`, 7 iterations of a 15x15 normalised box filter):
    each iteration, every pixel outside the mask becomes the mean of the currently-defined pixels in its
    ksize x ksize window (sum(v * w) / sum(w), w = 1 where defined); pixels inside the mask keep their
    own values exactly. The defined region grows by ksize // 2 pixels (Chebyshev distance) per iteration,
    i.e. about 49 px with the official 7 x 15. Pixels beyond that band are 0.

    values [H, W, C] (or [H, W]); mask [H, W] (pixels with mask > 0.5 are the sources).
    Returns values of the same shape, and with return_valid=True also valid [H, W] bool (defined pixels).
    """
    values = jnp.asarray(values, jnp.float32)
    squeeze = values.ndim == 2
    if squeeze:
        values = values[..., None]
    if values.ndim != 3:
        raise ValueError(f"values must have shape [H, W, C] or [H, W], got {values.shape}")
    inside = _mask_or_ones(mask, values.shape[:2]) > 0.5
    k = _check_ksize(ksize)
    if int(iters) != iters or iters < 0:
        raise ValueError(f"iters must be an int >= 0, got {iters!r}")
    src = jnp.where(inside[..., None], values, 0.0)

    def step(carry, _):
        v, defined = carry
        wgt = defined.astype(jnp.float32)[..., None]
        num = box_sum(v * wgt, k)
        den = box_sum(wgt, k)  # an integer count, exact in float32
        filled = den[..., 0] > 0.5
        ext = jnp.where(filled[..., None], num / jnp.maximum(den, 1.0), 0.0)
        v = jnp.where(inside[..., None], src, ext)
        return (v, filled | inside), None

    (out, valid), _ = jax.lax.scan(step, (src, inside), None, length=int(iters))
    if squeeze:
        out = out[..., 0]
    return (out, valid) if return_valid else out


# ----------------------------------------------------------------------------------------------------
# Euler integration


def inside_image(pos, h, w):
    """bool [...]: positions (u, v) [..., 2] inside the footprint of an H x W image.

    The official rounds positions, so a position is in bounds when round(u) in [0, W-1] and round(v) in
    [0, H-1], i.e. u in [-0.5, W-0.5) and v in [-0.5, H-0.5). Used by euler_integrate and scene.py.
    """
    u, v = pos[..., 0], pos[..., 1]
    return (u >= -0.5) & (u < w - 0.5) & (v >= -0.5) & (v < h - 0.5)


@partial(jax.jit, static_argnames=("num_steps", "border"))
def _euler_scan(stacked, uv, cols, num_steps, border):
    h, w = stacked.shape[:2]

    def step(carry, _):
        disp, ok = carry
        m = jnp.take_along_axis(sample_bilinear(stacked, uv + disp, border=border), cols, axis=-1)
        # the step that leaves the image is applied, then the point is invalid and frozen
        disp = jnp.where(ok[:, None], disp + m, disp)
        ok = ok & inside_image(uv + disp, h, w)
        return (disp, ok), (disp, ok)

    init = (jnp.zeros_like(uv), jnp.ones(uv.shape[:1], bool))
    _, (disp, ok) = jax.lax.scan(step, init, None, length=num_steps)
    return {"displacement": jnp.concatenate([init[0][None], disp], axis=0),
            "valid": jnp.concatenate([init[1][None], ok], axis=0)}


def euler_integrate(fields, uv, num_steps, layer=None, border="zeros"):
    """Euler-integrate an Eulerian flow (paper Eq. 3) for points starting at uv, all steps in one lax.scan.

    F_{0->t}(x0) = F_{0->t-1}(x0) + M(x0 + F_{0->t-1}(x0)), F_{0->0} = 0, with M sampled BILINEARLY
    (kernels.sampling.sample_bilinear, `border` = "zeros" | "clamp").

    fields: [H, W, 2] one flow, or [L, H, W, 2] one flow per layer with `layer` [P] int selecting each
      point's field (px/frame). uv: [P, 2] start positions (u, v) (pixel centres for an image).
    num_steps: static int >= 0.
    Returns dict(displacement [num_steps+1, P, 2] float32 (index 0 is zero), valid [num_steps+1, P] bool).
    valid[t] is False once the position x0 + F_{0->t} has left the image footprint (u outside
    [-0.5, W-0.5) or v outside [-0.5, H-0.5), the official's rounded bounds) and stays False; the step
    that leaves is still applied, then the point stops (its displacement is frozen).

    Differences from the official `euler_integration.py` (deliberate):
      - bilinear instead of nearest (rounded-position) sampling of M: smooth in x0, no pixel snapping;
      - the paper's recursion: the official returns a "DEBUG" accumulator sum_{k=1..t} M(round(x_k)),
        sampled after each position update, i.e. shifted one step from Eq. 3;
      - all frames in one O(N) scan; the official recomputes every frame from scratch (O(N^2)).
    """
    if border not in BORDER_MODES:
        raise ValueError(f"border must be one of {BORDER_MODES}, got {border!r}")
    if int(num_steps) != num_steps or num_steps < 0:
        raise ValueError(f"num_steps must be an int >= 0, got {num_steps!r}")
    fields = jnp.asarray(fields, jnp.float32)
    if fields.ndim == 3:
        _check_flow(fields)
        fields = fields[None]
    if fields.ndim != 4 or fields.shape[-1] != 2:
        raise ValueError(f"fields must have shape [H, W, 2] or [L, H, W, 2], got {tuple(fields.shape)}")
    num_layers, h, w, _ = fields.shape
    uv = jnp.asarray(uv, jnp.float32)
    if uv.ndim != 2 or uv.shape[-1] != 2:
        raise ValueError(f"uv must have shape [P, 2], got {tuple(uv.shape)}")
    layer = jnp.zeros(uv.shape[:1], jnp.int32) if layer is None else jnp.asarray(layer, jnp.int32)
    if layer.shape != uv.shape[:1]:
        raise ValueError(f"layer must have shape [P] = [{uv.shape[0]}], got {tuple(layer.shape)}")
    stacked = jnp.moveaxis(fields, 0, 2).reshape(h, w, num_layers * 2)
    cols = jnp.stack([2 * layer, 2 * layer + 1], axis=-1)
    return _euler_scan(stacked, uv, cols, int(num_steps), border)


def symmetric_displacements(fields, uv, num_frames, layer=None, border="zeros"):
    """Forward and backward displacements of a seamlessly looping cinemagraph of num_frames frames.

    Frame t (0 <= t < N) uses forward F(0->t) (Euler integration of M for t steps) and backward
    F(0->t-N) (integration of -M for N - t steps), blended with weight (1 - t/N) on the forward side
    (ARCHITECTURE.md time convention, official demo.py); frame N would equal frame 0. Each direction is
    one scan of N steps (O(N), vs the official O(N^2)): forward[t] = euler(M)[t],
    backward[t] = euler(-M)[N - t]. fields, uv, layer, border as `euler_integrate`.
    Returns dict(forward [N, P, 2], backward [N, P, 2], forward_valid [N, P] bool,
                 backward_valid [N, P] bool, time [N] float32 = t / N).
    """
    if int(num_frames) != num_frames or num_frames < 1:
        raise ValueError(f"num_frames must be an int >= 1, got {num_frames!r}")
    n = int(num_frames)
    fields = jnp.asarray(fields, jnp.float32)
    fwd = euler_integrate(fields, uv, n, layer, border)
    bwd = euler_integrate(-fields, uv, n, layer, border)
    t = jnp.arange(n)
    return {
        "forward": fwd["displacement"][t],
        "backward": bwd["displacement"][n - t],
        "forward_valid": fwd["valid"][t],
        "backward_valid": bwd["valid"][n - t],
        "time": t.astype(jnp.float32) / jnp.float32(n),
    }


# ----------------------------------------------------------------------------------------------------
# convenience


def _check_flow_scale(flow_scale):
    if not np.isfinite(flow_scale) or flow_scale <= 0:
        raise ValueError(f"flow_scale must be > 0 (official --flow_scale), got {flow_scale!r}")


def flow_from_annotations(mask, hints, size, *, sigma=0.0, smooth_ksize=15, flow_scale=1.0):
    """The final Eulerian flow [H, W, 2] (px/frame) from a motion mask and hints.

    hints -> dense Gaussian field * mask (`hints_to_flow`) -> official masked box smoothing
    (`smooth_flow`, skipped when smooth_ksize == 0) -> / flow_scale (official --flow_scale, > 1 slows the
    motion). Defaults are configs/cinemagraph.py c.motion (hint_sigma, smooth_ksize, flow_scale).
    mask [H, W] in [0, 1] or None (everything moves); size (H, W).
    """
    _check_flow_scale(flow_scale)
    h, w = _check_size(size)
    mask = _mask_or_ones(mask, (h, w))
    flow = hints_to_flow(hints, mask, (h, w), sigma=sigma)
    if smooth_ksize:
        flow = smooth_flow(flow, mask, smooth_ksize)
    return flow / jnp.float32(flow_scale)


def prepare_flow(flow, mask=None, *, smooth_ksize=0, flow_scale=1.0):
    """A user-given dense Eulerian flow [H, W, 2] (px/frame), prepared like a predicted one.

    Masked if a mask [H, W] is given; optionally box-smoothed like the official post-processing
    (smooth_ksize > 0; off by default because a user flow is taken as final), then / flow_scale.
    Non-finite flow values are an error.
    """
    _check_flow_scale(flow_scale)
    flow = jnp.asarray(flow, jnp.float32)
    _check_flow(flow)
    if not bool(jnp.all(jnp.isfinite(flow))):
        raise ValueError("flow contains NaN or inf values")
    if smooth_ksize:
        flow = smooth_flow(flow, mask, smooth_ksize)
    elif mask is not None:
        flow = flow * _mask_or_ones(mask, flow.shape[:2])[..., None]
    return flow / jnp.float32(flow_scale)


# ----------------------------------------------------------------------------------------------------
# motion estimators: (image, mask, hints, size) -> Eulerian flow


class HintFlow:
    """The weight-free motion estimator: `flow_from_annotations` of the mask and hints (the image is unused).

    __call__(image [H, W, 3], mask [H, W], hints, size (H, W)) -> flow [H, W, 2] px/frame. Registered in
    MOTION_ESTIMATORS as "hints"; the learned motion net ("net", cine_jax/learned.py) has the same call.
    """

    def __init__(self, sigma=0.0, smooth_ksize=15, flow_scale=1.0):
        self.sigma, self.smooth_ksize, self.flow_scale = sigma, smooth_ksize, flow_scale

    @classmethod
    def from_config(cls, config, seed=0):
        """From the `motion` section of configs/cinemagraph.py (hint_sigma, smooth_ksize, flow_scale)."""
        del seed
        return cls(float(config.hint_sigma), int(config.smooth_ksize), float(config.flow_scale))

    def __call__(self, image, mask, hints, size):
        del image
        return flow_from_annotations(mask, hints, size, sigma=self.sigma, smooth_ksize=self.smooth_ksize,
                                     flow_scale=self.flow_scale)


def _motion_net_from_config(**kwargs):
    from cine_jax import learned

    return learned.MotionNetFlow.from_config(**kwargs)


def _registry():
    from cine_jax.registry import Registry

    reg = Registry("motion estimator")
    reg.register("hints", HintFlow.from_config)
    # the learned motion net; its factory takes the `models` section and section=the `motion` section
    reg.register("net", _motion_net_from_config)
    return reg


MOTION_ESTIMATORS = _registry()
register_motion_estimator = MOTION_ESTIMATORS.register
get_motion_estimator = MOTION_ESTIMATORS.get
