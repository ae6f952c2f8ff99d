"""The learned components of the cinemagraph pipeline, loaded from converted weights (`cine-jax convert`).

`cine-jax animate --weights DIR` (or config `models.dir`) switches every component whose converted files
are in DIR to its learned version; config `models.<component>` may force either choice:

    component   files in DIR (NAME.json + NAME.safetensors)   learned name   weight-free name (config key)
    depth       dpt                                           "dpt"          depth.estimator ("heuristic")
    inpainter   inpaint_depth, inpaint_color                  "partialconv"  layering.inpainter ("opencv")
    motion      motion                                        "net"          "hints"
    features    feature_net                                   "resunet"      scene.features ("rgba")
    decoder     img_decoder (needs the feature net too)       "imgdecoder"   render.decoder ("identity")

`resolve(cfg)` decides, checks and loads every learned file before any compute: a file the config asks for
that is missing or broken is a ValueError naming the file. Each learned component is registered under its
name in the registry the pipeline already uses (depth.ESTIMATORS, layering.INPAINTERS,
motion.MOTION_ESTIMATORS, scene.FEATURES, render.DECODERS); its factory takes the `models` config section,
the seed and `section=` (the component's own config section).

Contract for training code (cine_jax/train/): write weights with `cine_jax.nets.checkpoints.save_converted
(DIR, NAME, module, variables)` under the NAMEs above; `cine-jax animate --weights DIR` then uses them.

What each learned component computes (official facts: shared/reference/cinemagraphy.md):
  depth       DPT-Hybrid with the official pre/post-processing (nets.dpt.DPTDepthEstimator), on the
              working-size image; the nearest pixel gets depth 1 (then depth.near).
  inpainter   the 3D-Photo partial-convolution depth and colour nets (nets.inpaint.PartialConvInpainter).
  motion      the motion net from image, mask and hints (official demo: inputs resized to motion_size,
              hints densified with sigma = motion.hint_sigma or H / K, flow * mask, box blur
              motion.smooth_ksize, * mask, rescaled to the image, / motion.flow_scale).
  features    ResUNet on the stack of RGBA LDI layers, upsampled bilinearly (align_corners=True) to the image;
              a layer pixel outside its eroded visible region (scene.visible_erode) gets the mask-weighted
              composite of the visible layers' features at that pixel, computed at the feature resolution
              (masks area-resized) and upsampled (official compute_scene_flow_for_motion). Per-layer maps are
              [RGBA, 32 features].
  decoder     the official renderer input: each side splats [RGBA, features, D] with D the normalised
              disparity of the frame's points (both sides; `point_channels`), premultiplied by the splat
              coverage (as PyTorch3D's compositor returns them); ImgDecoder blends the two sides (learned
              alpha, or Eq. 4 with models.decoder_blend = "eq4") and decodes. Odd sizes are edge-padded to
              even (and to >= 32) for the decoder and cropped back.
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "COMPONENTS",
    "ImgDecoderRenderer",
    "MotionNetFlow",
    "ResUNetFeatures",
    "Selection",
    "composite_visible_features",
    "resolve",
]

# component -> (converted NAMEs it needs, learned registry name, config key of the weight-free choice)
COMPONENTS = {
    "depth": (("dpt",), "dpt", "depth.estimator"),
    "inpainter": (("inpaint_depth", "inpaint_color"), "partialconv", "layering.inpainter"),
    "motion": (("motion",), "net", None),
    "features": (("feature_net",), "resunet", "scene.features"),
    "decoder": (("img_decoder",), "imgdecoder", "render.decoder"),
}
_CLASSES = {"dpt": "DPTHybrid", "inpaint_depth": "PartialConvUNet", "inpaint_color": "PartialConvUNet",
            "motion": "SPADEUnet4MaskMotion", "feature_net": "ResUNet", "img_decoder": "ImgDecoder"}
_SECTIONS = {"depth": "depth", "inpainter": "layering", "motion": "motion", "features": "scene",
             "decoder": "render"}


def _registry(component):
    from cine_jax import depth, layering, motion, render, scene

    return {"depth": depth.ESTIMATORS, "inpainter": layering.INPAINTERS, "motion": motion.MOTION_ESTIMATORS,
            "features": scene.FEATURES, "decoder": render.DECODERS}[component]


def _lookup(cfg, key):
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def _files(directory, name):
    return os.path.join(directory, name + ".json"), os.path.join(directory, name + ".safetensors")


class Selection(dict):
    """{component: (registry name, factory kwargs)} chosen by `resolve`; `build(component)` makes one."""

    def build(self, component):
        name, kwargs = self[component]
        return _registry(component).get(name, **kwargs)

    def learned(self):
        """The components that run a network."""
        return sorted(c for c, (name, _) in self.items() if name == COMPONENTS[c][1])


def resolve(cfg, seed=None):
    """Choose every component (see the module docstring), check that the learned ones' files exist and load
    them (cached), all before any compute. Returns a Selection. Errors are ValueErrors naming the file or
    the config key."""
    m = cfg.models
    seed = int(cfg.seed if seed is None else seed)
    directory = str(m.dir or "")
    dtype = str(m.dtype)
    if dtype not in ("float32", "bfloat16"):
        raise ValueError(f"config key 'models.dtype' = {dtype!r}: must be float32 or bfloat16")
    if str(m.decoder_blend) not in ("official", "eq4"):
        raise ValueError(f"config key 'models.decoder_blend' = {m.decoder_blend!r}: must be official or eq4")
    if int(m.motion_size) % 256 or int(m.motion_size) < 256:
        raise ValueError(f"config key 'models.motion_size' = {m.motion_size!r}: must be a positive multiple of 256 "
                         "(eight stride-2 convolutions)")
    if not isinstance(m.motion_power_iteration, bool):
        raise ValueError(f"config key 'models.motion_power_iteration' = {m.motion_power_iteration!r}: must be true or "
                         "false")
    if int(m.dpt_net_size) < 32 or not float(m.inpaint_sigma) > 0:
        raise ValueError("config keys 'models.dpt_net_size' (>= 32) and 'models.inpaint_sigma' (> 0) out of range: "
                         f"{m.dpt_net_size!r}, {m.inpaint_sigma!r}")
    if int(m.dpt_median_ksize) % 2 == 0:
        raise ValueError(f"config key 'models.dpt_median_ksize' = {m.dpt_median_ksize!r}: must be odd")
    if directory and not os.path.isdir(directory):
        raise ValueError(f"{directory}: weights folder not found (--weights / models.dir)")
    present = {}
    if directory:
        for comp, (names, _, _) in COMPONENTS.items():
            have = []
            for name in names:
                js, st = _files(directory, name)
                if os.path.exists(js) != os.path.exists(st):
                    missing, pair = (st, js) if os.path.exists(js) else (js, st)
                    raise ValueError(f"{missing}: file not found (its pair {os.path.basename(pair)} is in the "
                                     "weights folder; rerun `cine-jax convert`)")
                have.append(os.path.exists(js))
            if any(have) and not all(have):
                lost = [_files(directory, n)[0] for n, h in zip(names, have) if not h]
                raise ValueError(f"{lost[0]}: file not found (the learned {comp} needs {', '.join(names)})")
            present[comp] = all(have)
    sel = Selection()
    for comp, (names, learned_name, fallback_key) in COMPONENTS.items():
        choice, key = str(m[comp]), f"models.{comp}"
        if choice == "auto":
            if present.get(comp):
                choice = learned_name
            elif fallback_key is None:
                choice = "hints"
            else:
                choice, key = str(_lookup(cfg, fallback_key)), fallback_key
        registry = _registry(comp)
        if choice not in registry.names():
            raise ValueError(f"config key {key!r}: unknown {registry.kind} {choice!r}; registered: "
                             f"{', '.join(registry.names())}" + (" (or auto)" if key.startswith("models.") else ""))
        section = cfg[_SECTIONS[comp]]
        if choice == learned_name:
            if not directory:
                raise ValueError(f"config key 'models.{comp}' = {choice!r} needs converted weights: pass --weights DIR "
                                 f"(or models.dir) holding {', '.join(n + '.safetensors' for n in names)}")
            for name in names:
                for path in _files(directory, name):
                    if not os.path.isfile(path):
                        raise ValueError(f"{path}: file not found (models.{comp} = {choice!r}; run `cine-jax convert`)")
            sel[comp] = (choice, dict(config=m, seed=seed, section=section))
        else:
            sel[comp] = (choice, dict(config=section, seed=seed))
    if directory and not sel.learned():
        raise ValueError(f"{directory}: the weights folder holds no converted network the config uses (expected "
                         "some of " + ", ".join(f"{n}.safetensors" for c in COMPONENTS.values() for n in c[0]) + ")")
    if sel["decoder"][0] == "imgdecoder" and sel["features"][0] != "resunet":
        raise ValueError(f"{_files(directory, 'feature_net')[1]}: the learned decoder (img_decoder) needs the "
                         "learned features (feature_net, models.features = auto or resunet)")
    for comp in sel.learned():  # read and check every file now, before any compute
        for name in COMPONENTS[comp][0]:
            load(directory, name, m)
    return sel


# ----------------------------------------------------------------------------------------------------
# loading (cached: resolve() checks the files, the factories reuse what it read)


@functools.lru_cache(maxsize=8)
def _load_cached(path, stamp, cls, dtype, overrides):
    from cine_jax.nets import checkpoints as ck

    del stamp
    return ck.load_converted(path, expected_class=cls, dtype=dtype, **dict(overrides))


def load(directory, name, models):
    """(module, variables) of DIR/name with the dtype and module overrides of the `models` config section."""
    path = os.path.join(directory, name)
    js, st = _files(directory, name)
    stamp = tuple((os.stat(p).st_mtime_ns, os.stat(p).st_size) for p in (js, st))
    overrides = ()
    dtype = None
    if name in ("motion", "feature_net", "img_decoder"):  # these cast their params (nets/__init__ precision)
        dtype = jnp.dtype(str(models.dtype)) if str(models.dtype) != "float32" else None
    if name == "motion":
        overrides = (("power_iteration", bool(models.motion_power_iteration)),)
    if name == "img_decoder":
        overrides = (("blend", str(models.decoder_blend)),)
    return _load_cached(path, stamp, _CLASSES[name], dtype, overrides)


def _dtype(models):
    return jnp.dtype(str(models.dtype))


_BUILT = {}


def _memo(key, make):
    """A built component (its jitted functions and compiled executables) reused while its files are unchanged:
    rerunning the pipeline with the same weights and settings does not recompile the networks."""
    if key not in _BUILT:
        if len(_BUILT) >= 8:
            _BUILT.clear()
        _BUILT[key] = make()
    return _BUILT[key]


def _stamp(directory, *names):
    return tuple((os.path.abspath(p), os.stat(p).st_mtime_ns, os.stat(p).st_size)
                 for n in names for p in _files(directory, n))


# ----------------------------------------------------------------------------------------------------
# depth and inpainting


def dpt_estimator(config, seed=0, section=None):
    """depth.ESTIMATORS "dpt": DPTDepthEstimator on DIR/dpt (config: the `models` section)."""
    from cine_jax.nets import dpt

    del seed, section
    d = str(config.dir)
    key = ("dpt", _stamp(d, "dpt"), str(config.dtype), int(config.dpt_net_size), int(config.dpt_median_ksize))

    def make():
        module, variables = load(d, "dpt", config)
        return dpt.DPTDepthEstimator(variables, module.config, dtype=_dtype(config),
                                     net_size=int(config.dpt_net_size), median_ksize=int(config.dpt_median_ksize))

    return _memo(key, make)


def partialconv_inpainter(config, seed=0, section=None):
    """layering.INPAINTERS "partialconv": the 3D-Photo nets on DIR/inpaint_depth and DIR/inpaint_color."""
    from cine_jax.nets import inpaint

    del seed, section
    d = str(config.dir)
    key = ("partialconv", _stamp(d, "inpaint_depth", "inpaint_color"), str(config.dtype), float(config.inpaint_sigma))

    def make():
        d_mod, d_var = load(d, "inpaint_depth", config)
        c_mod, c_var = load(d, "inpaint_color", config)
        return inpaint.PartialConvInpainter(d_var, c_var, depth_config=d_mod.config, color_config=c_mod.config,
                                            dtype=_dtype(config), gaussian_sigma=float(config.inpaint_sigma))

    return _memo(key, make)


# ----------------------------------------------------------------------------------------------------
# motion


class MotionNetFlow:
    """motion.MOTION_ESTIMATORS "net": the official motion net. __call__(image [H, W, 3] in [0, 1], mask
    [H, W], hints [(start, vector), ...] in working-size pixels and px/frame, size (H, W)) -> flow [H, W, 2]."""

    def __init__(self, module, variables, size=768, sigma=0.0, smooth_ksize=15, flow_scale=1.0):
        self.module, self.variables = module, variables
        self.size, self.sigma, self.smooth_ksize, self.flow_scale = int(size), float(sigma), int(smooth_ksize), \
            float(flow_scale)
        self._apply = jax.jit(module.apply)

    @classmethod
    def from_config(cls, config, seed=0, section=None):
        """config: the `models` section; section: the `motion` section (hint_sigma, smooth_ksize, flow_scale)."""
        del seed
        d = str(config.dir)
        args = (int(config.motion_size), float(section.hint_sigma), int(section.smooth_ksize),
                float(section.flow_scale))
        key = ("motion", _stamp(d, "motion"), str(config.dtype), bool(config.motion_power_iteration), args)
        return _memo(key, lambda: cls(*load(d, "motion", config), *args))

    def __call__(self, image, mask, hints, size):
        from cine_jax import motion as motion_lib
        from cine_jax.nets import motion

        starts, vectors = motion_lib.parse_hints(hints)
        h, w = size
        sigma = self.sigma or h / len(starts)  # 0: H / K, the middle of the official random range
        inputs = motion.motion_net_inputs(image, mask, np.asarray(starts), np.asarray(vectors), sigma, self.size)
        pred = self._apply(self.variables, inputs)[0].astype(jnp.float32)
        flow = motion.motion_postprocess(pred, inputs[0, ..., 3], (h, w), self.flow_scale, self.smooth_ksize)
        flow = np.asarray(flow, np.float32)
        if not np.all(np.isfinite(flow)):
            raise ValueError("motion net: the network produced NaN or inf (check the weights)")
        return flow


# ----------------------------------------------------------------------------------------------------
# features


def _adaptive_avg_pool_matrix(n_in, n_out):
    """[n_out, n_in] averaging matrix of torch adaptive average pooling (F.interpolate mode="area")."""
    a = np.zeros((n_out, n_in), np.float32)
    for o in range(n_out):
        lo, hi = (o * n_in) // n_out, -(-((o + 1) * n_in) // n_out)
        a[o, lo:hi] = 1.0 / (hi - lo)
    return a


def composite_visible_features(features, visible, size):
    """The official feature of points outside their layer's visible region: sum_l F_l M_l / sum_l M_l.

    features [L, h, w, C] (the feature net's resolution), visible [L, H, W] masks; the masks are area-resized
    to (h, w) (F.interpolate mode="area"), the weighted sum and the weight are upsampled bilinearly with
    align_corners=True to size = (H, W) (grid_sample at the pixel grid), and divided (weight clamped at 1e-6).
    Returns [H, W, C] float32.
    """
    from kernels.sampling import resize

    f = np.asarray(features, np.float32)
    m = np.asarray(visible, np.float32)
    ph, pw = _adaptive_avg_pool_matrix(m.shape[1], f.shape[1]), _adaptive_avg_pool_matrix(m.shape[2], f.shape[2])
    m_ds = np.matmul(np.matmul(ph, m), pw.T)  # [L, h, w] (two matmuls: a 3-operand einsum is O(L h H W w))
    num = np.einsum("lhwc,lhw->hwc", f, m_ds)
    den = m_ds.sum(0)[..., None]
    up = np.asarray(resize(jnp.asarray(np.concatenate([num, den], -1)), tuple(size), "bilinear", align_corners=True))
    return up[..., :-1] / np.maximum(up[..., -1:], 1e-6)


class ResUNetFeatures:
    """scene.FEATURES "resunet": f(ldi) -> [L, H, W, 4 + C] = [RGBA, learned features] (module docstring)."""

    def __init__(self, module, variables, visible_erode=5):
        self.module, self.variables, self.visible_erode = module, variables, int(visible_erode)
        self._apply = jax.jit(module.apply)

    @classmethod
    def from_config(cls, config, seed=0, section=None):
        """config: the `models` section; section: the `scene` section (visible_erode, official 5)."""
        del seed
        d = str(config.dir)
        key = ("resunet", _stamp(d, "feature_net"), str(config.dtype), int(section.visible_erode))
        return _memo(key, lambda: cls(*load(d, "feature_net", config), int(section.visible_erode)))

    def __call__(self, ldi):
        import cv2

        from cine_jax.nets import features as feats_lib

        rgba = np.asarray(ldi.rgba, np.float32)
        h, w = rgba.shape[1:3]
        small = np.asarray(self._apply(self.variables, jnp.asarray(rgba)), np.float32)  # [L, h', w', C]
        own = np.asarray(feats_lib.upsample_features(small, (h, w)), np.float32)
        comp = composite_visible_features(small, ldi.visible, (h, w))
        kernel = np.ones((self.visible_erode, self.visible_erode), np.uint8)
        # kornia erosion's default "geodesic" border: pixels outside the image do not erode (OpenCV default)
        keep = np.stack([cv2.erode(v.astype(np.uint8), kernel) for v in np.asarray(ldi.visible)]).astype(np.float32)
        out = keep[..., None] * own + (1.0 - keep[..., None]) * comp[None]
        if not np.all(np.isfinite(out)):
            raise ValueError("feature net: the network produced NaN or inf (check the weights)")
        return np.concatenate([rgba, out], axis=-1)


# ----------------------------------------------------------------------------------------------------
# decoder


class ImgDecoderRenderer:
    """render.DECODERS "imgdecoder": the official ImgDecoder on the two splatted sides.

    Used by render.render_frame through two hooks: `point_channels(z_f, z_b, valid_f, valid_b)` gives the
    per-point normalised disparity D appended to the splatted features, and `decode_sides(side_f, side_b,
    time, variables)` (splat dicts with features [H, W, 37] and coverage alpha [H, W]; depth in units of the
    nearest depth for the Eq. 4 blend) returns RGB [H, W, 3]. `variables` travel as an argument of the
    jitted renderer (not as constants baked into it).
    """

    def __init__(self, module, variables):
        self.module, self.variables = module, variables

    @classmethod
    def from_config(cls, config, seed=0, section=None):
        """config: the `models` section (decoder_blend, dtype); section: `render` (blend_beta for Eq. 4)."""
        del seed
        module, variables = load(str(config.dir), "img_decoder", config)
        if module.blend == "eq4":
            module = module.clone(eq4_beta=float(section.blend_beta))
        return cls(module, variables)

    def point_channels(self, z_f, z_b, valid_f, valid_b):
        """D per point of each side: 1 / z min-max normalised over the valid points of both sides."""
        from cine_jax.nets.decoder import normalized_disparity

        n = z_f.shape[0]
        d = normalized_disparity(jnp.concatenate([z_f, z_b]), jnp.concatenate([valid_f, valid_b]))
        return d[:n, None], d[n:, None]

    def decode_sides(self, side_f, side_b, time, variables=None):
        variables = self.variables if variables is None else variables
        x_f = side_f["features"] * side_f["alpha"][..., None]
        x_b = side_b["features"] * side_b["alpha"][..., None]
        h, w = x_f.shape[:2]
        ph, pw = max(32, h + h % 2) - h, max(32, w + w % 2) - w

        def pad(a):
            return jnp.pad(a, ((0, ph), (0, pw)) + ((0, 0),) * (a.ndim - 2), mode="edge")[None]

        extra = {}
        if self.module.blend == "eq4":
            extra = dict(depth_f=pad(side_f["depth"]), depth_b=pad(side_b["depth"]))
        rgb = self.module.apply(variables, pad(x_f), pad(x_b), time, **extra)[0]
        return rgb[:h, :w].astype(jnp.float32)
