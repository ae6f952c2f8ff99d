"""Dynamic radiance field: 4D grid -> MLP -> density (+ blob) and albedo; normals, shading, backgrounds.

Official source (animate124.md section 1, dnerf/network_4dgrid.py): sigma_net = MLP(32 -> 64 -> 4),
ReLU, bias, PyTorch default init; sigma = trunc_exp(raw + blob(x)) with the blob under no_grad;
albedo = sigmoid(channels 1..3); no view dependence. Normals are central finite differences of sigma
(eps 1e-2, positions clamped to +-bound), n = -grad / |grad|, NaN -> 0. Shading: lambertian factor
a + (1 - a) max(0, n.l); 'textureless' repeats it over RGB; 'normal' shows (n + 1) / 2.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from four_d.grid4d import Grid4D, grid_spec_from_config
from kernels.grid import GridSpec
from kernels.mathx import safe_normalize, trunc_exp

DENSITY_ACTIVATIONS = ("exp", "softplus", "relu")
SHADING_MODES = ("albedo", "lambertian", "textureless", "normal")


def _torch_linear_init(fan_in):
    """PyTorch nn.Linear default init: weight and bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, minval=-bound, maxval=bound)

    return init


def density_blob(x, blob_density=10.0, blob_radius=0.2, activation="exp"):
    """DreamFusion density blob added to the raw density (official density_blob, no gradient).

    exp activation: blob_density * exp(-|x|^2 / (2 r^2)); otherwise blob_density * (1 - |x| / r).
    x [..., 3] -> [...].
    """
    d = jnp.sum(jnp.square(x), axis=-1)
    if activation == "exp":
        g = blob_density * jnp.exp(-d / (2.0 * blob_radius**2))
    else:
        g = blob_density * (1.0 - jnp.sqrt(d) / blob_radius)
    return jax.lax.stop_gradient(g)


def activate_density(raw, activation="exp"):
    """Density activation: 'exp' = trunc_exp (official default), 'softplus', 'relu'."""
    if activation == "exp":
        return trunc_exp(raw)
    if activation == "softplus":
        return jax.nn.softplus(raw)
    if activation == "relu":
        return jax.nn.relu(raw)
    raise ValueError(
        f"four_d/field.py: density_activation must be one of {DENSITY_ACTIVATIONS}, got {activation!r}"
    )


class DynamicField(nn.Module):
    """Grid4D features -> MLP(L*F -> hidden -> 4) -> sigma [N], albedo [N, 3].

    Params: "grid" (Grid4D tables [T, E, F]), "mlp_0" Dense(hidden), "mlp_1" Dense(4).
    """

    spec: GridSpec
    num_time_grids: int = 64
    hidden: int = 64  # official hidden_dim 64, num_layers 2
    blob_density: float = 10.0  # official --blob_density
    blob_radius: float = 0.2  # official --blob_radius
    density_activation: str = "exp"  # official --density_activation

    def setup(self):
        if self.density_activation not in DENSITY_ACTIVATIONS:
            raise ValueError(
                f"four_d/field.py DynamicField: density_activation must be one of {DENSITY_ACTIVATIONS}, "
                f"got {self.density_activation!r}"
            )
        self.grid = Grid4D(self.spec, self.num_time_grids)
        in_dim = self.spec.output_dim
        self.mlp_0 = nn.Dense(
            self.hidden, kernel_init=_torch_linear_init(in_dim), bias_init=_torch_linear_init(in_dim)
        )
        self.mlp_1 = nn.Dense(
            4, kernel_init=_torch_linear_init(self.hidden), bias_init=_torch_linear_init(self.hidden)
        )

    def raw(self, x, t, level_mask=None):
        """MLP output [N, 4] (channel 0 raw density before the blob, 1..3 albedo logits)."""
        h = self.grid(x, t, level_mask)
        return self.mlp_1(nn.relu(self.mlp_0(h)))

    def __call__(self, x, t, level_mask=None):
        """x [N, 3] world points, t [N] (or scalar) in [0, 1] -> dict(sigma [N], albedo [N, 3])."""
        out = self.raw(x, t, level_mask)
        blob = density_blob(x, self.blob_density, self.blob_radius, self.density_activation)
        sigma = activate_density(out[:, 0] + blob, self.density_activation)
        return dict(sigma=sigma, albedo=jax.nn.sigmoid(out[:, 1:]))

    def density(self, x, t, level_mask=None):
        """sigma [N] only."""
        return self(x, t, level_mask)["sigma"]

    def normals(self, x, t, level_mask=None, eps=1e-2, bound=1.0):
        """Finite-difference normals [N, 3] of sigma at (x, t): the 6 N probes in one field evaluation."""
        t6 = jnp.tile(jnp.broadcast_to(jnp.asarray(t, jnp.float32), (x.shape[0],)), 6)
        return normals_from_probes(self.density(probe_points(x, eps, bound), t6, level_mask), eps)


# Probe order of the central differences: +x, -x, +y, -y, +z, -z (official finite_difference_normal).
_PROBE_OFFSETS = [[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]]


def probe_points(x, eps=1e-2, bound=1.0):
    """The six finite-difference probes [6 N, 3] of points x [N, 3] (probe-major: all +x probes first).

    x +- eps e_i, clamped to [-bound, bound] (official). Evaluating them in ONE field call lets the
    grid gather all 6 N probes' corners at once (instead of six calls).
    """
    x = jnp.asarray(x, jnp.float32)
    offsets = jnp.asarray(_PROBE_OFFSETS, jnp.float32) * eps  # [6, 3]
    return jnp.clip(x[None] + offsets[:, None, :], -bound, bound).reshape(-1, 3)


def normals_from_probes(probe_sigma, eps=1e-2):
    """n = -grad / |grad| from the densities [6 N] (or [6, N]) at probe_points; NaN/inf -> 0, 0 -> 0."""
    sig = jnp.asarray(probe_sigma, jnp.float32).reshape(6, -1)
    grad = (0.5 / eps) * (sig[0::2] - sig[1::2])  # [3, N] central differences along x, y, z
    normal = safe_normalize(-grad.T)
    return jnp.nan_to_num(normal, nan=0.0, posinf=0.0, neginf=0.0)


def finite_difference_normals(density_fn, x, eps=1e-2, bound=1.0):
    """n = -grad sigma / |grad sigma| by central differences (official finite_difference_normal).

    density_fn: [M, 3] -> [M], called ONCE on the 6 N probes x +- eps e_i (clamped to [-bound, bound],
    the official 6 extra passes). NaN/inf components become 0 (official nan_to_num); a zero gradient
    gives the zero normal. x [N, 3] -> [N, 3].
    """
    return normals_from_probes(density_fn(probe_points(x, eps, bound)), eps)


def shade(albedo, normals, light_dir, ambient, mode):
    """Colour [N, 3] of shaded samples (official NeRFNetwork.forward).

    albedo [N, 3], normals [N, 3] (unit or 0), light_dir [3] or [N, 3] unit, ambient scalar in [0, 1].
    'albedo': albedo; 'lambertian': albedo * f; 'textureless': f repeated over RGB; 'normal':
    (n + 1) / 2, with f = ambient + (1 - ambient) * max(0, n . l). `mode` is a name, or an index into
    SHADING_MODES that may be traced (then one lax.switch selects the formula at run time, so one
    compiled program serves every mode).
    """
    if not isinstance(mode, str):
        return jax.lax.switch(jnp.asarray(mode, jnp.int32),
                              [lambda a, n, lt, am, m=m: shade(a, n, lt, am, m) for m in SHADING_MODES],
                              albedo, normals, jnp.asarray(light_dir, jnp.float32), jnp.asarray(ambient, jnp.float32))
    if mode == "albedo":
        return albedo
    if mode == "normal":
        return (normals + 1.0) / 2.0
    if mode not in SHADING_MODES:
        raise ValueError(f"four_d/field.py shade: mode must be one of {SHADING_MODES}, got {mode!r}")
    ndotl = jnp.sum(normals * jnp.asarray(light_dir, normals.dtype), axis=-1)
    factor = ambient + (1.0 - ambient) * jnp.maximum(ndotl, 0.0)
    if mode == "textureless":
        return jnp.repeat(factor[..., None], 3, axis=-1)
    return albedo * factor[..., None]


def jittered_light(key, ray_origins):
    """The official training light: normalize(origin + g), g ~ N(0, I_3) drawn once per call (per step)
    and shared by all rays (dnerf/utils.py train_step: safe_normalize(rays_o + torch.randn(3))).

    ray_origins [..., 3] -> light directions [..., 3] (unit). Draw it with a fresh key every step.
    """
    g = jax.random.normal(key, (3,), jnp.float32)
    return safe_normalize(jnp.asarray(ray_origins, jnp.float32) + g)


def shading_index(mode):
    """Index of a shading mode in SHADING_MODES (names are validated; ints/traced ints pass through)."""
    if isinstance(mode, str):
        if mode not in SHADING_MODES:
            raise ValueError(f"four_d/field.py: shading must be one of {SHADING_MODES}, got {mode!r}")
        return SHADING_MODES.index(mode)
    return mode


def random_background(key, batch=None):
    """One uniform random RGB colour per iteration (official bg_radius -1): [3], or [batch, 3]."""
    shape = (3,) if batch is None else (int(batch), 3)
    return jax.random.uniform(key, shape, jnp.float32)


def white_background(batch=None):
    """White background colour: [3], or [batch, 3] (reference-view steps and test renders)."""
    shape = (3,) if batch is None else (int(batch), 3)
    return jnp.ones(shape, jnp.float32)


def background_color(kind, key=None, batch=None):
    """Background colour by name: 'random' (needs key), 'white' or 'black'."""
    if kind == "random":
        if key is None:
            raise ValueError("four_d/field.py background_color: 'random' needs a PRNG key")
        return random_background(key, batch)
    if kind == "white":
        return white_background(batch)
    if kind == "black":
        return jnp.zeros((3,) if batch is None else (int(batch), 3), jnp.float32)
    raise ValueError(f"four_d/field.py background_color: kind must be random/white/black, got {kind!r}")


def field_from_config(config, num_time_grids=None):
    """DynamicField from a configs/four_d.py ConfigDict (num_time_grids defaults to grid.time_grid_size)."""
    return DynamicField(
        spec=grid_spec_from_config(config.grid),
        num_time_grids=int(config.grid.time_grid_size if num_time_grids is None else num_time_grids),
        hidden=int(config.field.mlp_hidden),
        blob_density=float(config.field.blob_density),
        blob_radius=float(config.field.blob_radius),
        density_activation=str(config.field.density_activation),
    )
