"""Synthetic cinemagraph scenes with exact ground truth, for tests and demos.

A scene is a stack of fronto-parallel planes seen by the reference camera: a far textured "water" plane
whose texture flows with a constant velocity, optionally a static near plane (a square) in front. The
texture is an analytic sum of sinusoids, so its value at any (sub-pixel) position is known exactly.
"""

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class SmoothTexture:
    """RGB texture = 0.5 + sum_k a_k sin(2 pi (f_k . x) + phi_k) per channel, values in [0, 1].

    freqs [K, 2] cycles per pixel, amps [K, 3], phases [K, 3]."""

    freqs: np.ndarray
    amps: np.ndarray
    phases: np.ndarray

    def __call__(self, uv):
        """Texture at pixel coordinates uv [..., 2] (u = column, v = row) -> [..., 3]."""
        uv = np.asarray(uv, np.float64)
        arg = 2 * np.pi * (uv @ self.freqs.T)  # [..., K]
        val = 0.5 + np.einsum("...kc,kc->...c", np.sin(arg[..., None] + self.phases), self.amps)
        return np.clip(val, 0.0, 1.0).astype(np.float32)


def smooth_texture(seed=0, num_waves=4, min_period=24.0, max_period=64.0, amplitude=0.45):
    """A random SmoothTexture whose waves have periods in [min_period, max_period] pixels."""
    rng = np.random.default_rng(seed)
    periods = rng.uniform(min_period, max_period, size=num_waves)
    angles = rng.uniform(0, 2 * np.pi, size=num_waves)
    freqs = np.stack([np.cos(angles), np.sin(angles)], -1) / periods[:, None]
    amps = rng.uniform(0.5, 1.0, size=(num_waves, 3))
    amps = amps / amps.sum(0, keepdims=True) * amplitude
    phases = rng.uniform(0, 2 * np.pi, size=(num_waves, 3))
    return SmoothTexture(freqs, amps, phases)


def pixel_uv(height, width):
    v, u = np.mgrid[0:height, 0:width].astype(np.float32)
    return np.stack([u, v], -1)


@dataclasses.dataclass
class PlaneScene:
    """image [H,W,3], depth [H,W], mask [H,W] (moving pixels), flow [H,W,2] (px/frame), and the ground
    truth: texture (the far plane's analytic texture), velocity (dx, dy), near_box (top, left, bottom,
    right) or None, near_depth, far_depth, near_color."""

    image: np.ndarray
    depth: np.ndarray
    mask: np.ndarray
    flow: np.ndarray
    texture: SmoothTexture
    velocity: tuple
    near_box: object
    near_depth: float
    far_depth: float
    near_color: tuple

    def far_plane_at_time(self, t):
        """Ground-truth far-plane image after t frames of forward advection: tex(p - t v)."""
        h, w = self.depth.shape
        return self.texture(pixel_uv(h, w) - t * np.asarray(self.velocity, np.float32))


def plane_scene(height=64, width=64, velocity=(0.7, 0.3), far_depth=4.0, near_box=None, near_depth=1.0,
                near_color=(0.9, 0.2, 0.1), seed=0):
    """A flowing far plane and an optional static near square. Depth is normalised so the nearest is 1
    when there is a near square (near_depth = 1) and equals far_depth on the far plane."""
    tex = smooth_texture(seed)
    uv = pixel_uv(height, width)
    image = tex(uv)
    depth = np.full((height, width), far_depth, np.float32)
    mask = np.ones((height, width), np.float32)
    if near_box is not None:
        t, l, b, r = near_box
        image[t:b, l:r] = np.asarray(near_color, np.float32)
        depth[t:b, l:r] = near_depth
        mask[t:b, l:r] = 0.0
    flow = np.zeros((height, width, 2), np.float32)
    flow[...] = np.asarray(velocity, np.float32)
    flow *= mask[..., None]
    return PlaneScene(image, depth, mask, flow, tex, tuple(velocity), near_box, near_depth, far_depth,
                      tuple(near_color))
