"""Loading the frozen priors from local folders in the Hugging Face diffusers layout (never downloads).

A model folder (`unet/`, `vae/`, `controlnet/`, ...) holds `config.json` and one weights file, looked up in
this order: `diffusion_flax_model.msgpack` (Flax), `diffusion_pytorch_model.safetensors` (read with the
safetensors library: no torch needed), `diffusion_pytorch_model.bin` (torch.load(weights_only=True); torch is
imported only then). PyTorch weights are converted with diffusers' own renaming rules
(`diffusers.models.modeling_flax_pytorch_utils.rename_key` / `rename_key_and_reshape_tensor`) against the
parameter shapes from `jax.eval_shape(module.init_weights)`, so no eager initialisation runs; every key must
match (missing or unexpected keys are a clear error, never silently random weights). Transformers models
(CLIP text / vision) go through transformers' Flax `from_pretrained(_do_init=False)`, which reads
`model.safetensors` without torch (or `pytorch_model.bin` with it).

Config keys that the Flax classes of diffusers 0.39 silently ignore are checked: a checkpoint that needs one
(e.g. a UNet with class embeddings) is refused with the file and key named, rather than run wrongly.
"""

import contextlib
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}

FLAX_WEIGHTS = "diffusion_flax_model.msgpack"
SAFE_WEIGHTS = "diffusion_pytorch_model.safetensors"
TORCH_WEIGHTS = "diffusion_pytorch_model.bin"

# Config entries the diffusers Flax classes do not implement: (key, values the Flax code is correct for).
_UNET_UNSUPPORTED = {
    "class_embed_type": (None,),
    "num_class_embeds": (None,),
    "time_embedding_type": ("positional",),
    "resnet_time_scale_shift": ("default",),
    "encoder_hid_dim": (None,),
    "encoder_hid_dim_type": (None,),
    "time_cond_proj_dim": (None,),
    "conv_in_kernel": (3,),
    "conv_out_kernel": (3,),
    "norm_num_groups": (32,),
    "norm_eps": (1e-5,),
    "act_fn": ("silu",),
    "cross_attention_norm": (None,),
    "attention_type": ("default",),
    "dual_cross_attention": (False,),
    "timestep_post_act": (None,),
    "time_embedding_act_fn": (None,),
    "resnet_skip_time_act": (False,),
    "resnet_out_scale_factor": (1.0,),
    "mid_block_scale_factor": (1,),
    "center_input_sample": (False,),
    "class_embeddings_concat": (False,),
    "reverse_transformer_layers_per_block": (None,),
}
_UNET_BLOCKS = {"CrossAttnDownBlock2D", "DownBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"}
_VAE_UNSUPPORTED = {
    "latents_mean": (None,),
    "latents_std": (None,),
    "shift_factor": (None,),
    "use_quant_conv": (True,),
    "use_post_quant_conv": (True,),
    "mid_block_add_attention": (True,),
    "act_fn": ("silu",),
}
_CONTROLNET_UNSUPPORTED = {
    "class_embed_type": (None,),
    "num_class_embeds": (None,),
    "addition_embed_type": (None,),
    "encoder_hid_dim": (None,),
    "resnet_time_scale_shift": ("default",),
    "global_pool_conditions": (False,),
    "norm_num_groups": (32,),
    "act_fn": ("silu",),
    "conv_in_kernel": (3,),
}


def use_exact_gelu():
    """Make diffusers' Flax GEGLU use the exact (erf) GELU, as the PyTorch models the weights come from.

    diffusers 0.39 `attention_flax.FlaxGEGLU` calls `flax.linen.gelu`, whose default is the tanh
    approximation, while PyTorch `GEGLU` uses the exact `F.gelu`: on a tiny random SD UNet that alone is a
    2.4e-4 relative output difference (exact GELU: 2e-6). `FlaxFeedForward.setup` looks `FlaxGEGLU` up in
    its module namespace at call time, so a subclass with the exact GELU is installed there (parameter names
    are unchanged). Idempotent; every loader here calls it before building a module (not at import time, so
    importing four_d.priors never imports diffusers, which imports torch when torch is installed).
    """
    from diffusers.models import attention_flax

    base = attention_flax.FlaxGEGLU
    if getattr(base, "_cine_exact_gelu", False):
        return

    class ExactGELUGEGLU(base):
        _cine_exact_gelu = True

        def __call__(self, hidden_states, deterministic=True):
            hidden_states = self.proj(hidden_states)
            hidden_linear, hidden_gelu = jnp.split(hidden_states, 2, axis=2)
            out = hidden_linear * jax.nn.gelu(hidden_gelu, approximate=False)
            return self.dropout_layer(out, deterministic=deterministic)

    ExactGELUGEGLU.__name__ = "FlaxGEGLU"
    attention_flax.FlaxGEGLU = ExactGELUGEGLU


@contextlib.contextmanager
def controlnet_attention(memory_efficient):
    """Within the context, diffusers' FlaxControlNetModel builds its cross-attention blocks with
    use_memory_efficient_attention=memory_efficient (chunked attention; the class has no option for it).

    Flax runs `setup` when the module is applied (traced), and FlaxControlNetModel.setup looks its block
    classes up in its module namespace, so wrapping `controlnet.apply` (inside jit) in this context selects the
    attention for that trace only. At 1024 px (128 x 128 latents) the full self-attention scores of the
    ControlNet alone take ~34 GB per layer in float32 (benchmarks/priors.py); the official runs use xformers.
    """
    from diffusers.models.controlnets import controlnet_flax as cf
    from diffusers.models.unets import unet_2d_blocks_flax as blocks

    saved = cf.FlaxCrossAttnDownBlock2D, cf.FlaxUNetMidBlock2DCrossAttn
    if memory_efficient:
        class MemoryEfficientCrossAttnDownBlock2D(blocks.FlaxCrossAttnDownBlock2D):
            use_memory_efficient_attention: bool = True

        class MemoryEfficientUNetMidBlock2DCrossAttn(blocks.FlaxUNetMidBlock2DCrossAttn):
            use_memory_efficient_attention: bool = True

        cf.FlaxCrossAttnDownBlock2D = MemoryEfficientCrossAttnDownBlock2D
        cf.FlaxUNetMidBlock2DCrossAttn = MemoryEfficientUNetMidBlock2DCrossAttn
    try:
        yield
    finally:
        cf.FlaxCrossAttnDownBlock2D, cf.FlaxUNetMidBlock2DCrossAttn = saved


def parse_dtype(name, where="four_d/priors"):
    if name not in DTYPES:
        raise ValueError(f"{where}: dtype must be one of {tuple(DTYPES)}, got {name!r}")
    return DTYPES[name]


def read_json(path):
    """The parsed JSON file at path; a ValueError naming the file if it is missing or malformed."""
    if not os.path.isfile(path):
        raise ValueError(f"{path}: file not found")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


def require_dir(folder, name=None):
    """folder/name as a path, or a ValueError naming it and listing what the parent holds."""
    path = folder if name is None else os.path.join(folder, name)
    if not os.path.isdir(path):
        parent = os.path.dirname(path.rstrip(os.sep)) or "."
        have = sorted(os.listdir(parent)) if os.path.isdir(parent) else []
        raise ValueError(f"{path}: folder not found (the diffusers layout needs it; {parent} holds {have})")
    return path


def model_index(folder):
    """folder/model_index.json as a dict ({} when the folder has none)."""
    path = os.path.join(folder, "model_index.json")
    return read_json(path) if os.path.isfile(path) else {}


def weights_file(folder, variant=None):
    """The weights file of a diffusers model folder (Flax msgpack, safetensors, or PyTorch .bin)."""
    require_dir(folder)
    names = (FLAX_WEIGHTS, SAFE_WEIGHTS, TORCH_WEIGHTS)
    if variant:  # e.g. "fp16": diffusion_pytorch_model.fp16.safetensors
        names = tuple(f"{n.rsplit('.', 1)[0]}.{variant}.{n.rsplit('.', 1)[1]}" for n in names)
    for name in names:
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            return path
    raise ValueError(f"{folder}: no weights file (expected one of {names}); found {sorted(os.listdir(folder))}")


def read_state_dict(path):
    """{name: np.ndarray} from a .safetensors (no torch) or PyTorch .bin/.pt/.pth (torch, weights_only)."""
    if not os.path.isfile(path):
        raise ValueError(f"{path}: file not found")
    if path.endswith(".safetensors"):
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(path, framework="flax") as f:
                return {k: np.asarray(f.get_tensor(k)) for k in f.keys()}
        except (SafetensorError, OSError) as e:
            raise ValueError(f"{path}: not a readable safetensors file ({e})") from None
    import torch  # only for PyTorch pickles

    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for corrupt files
        raise ValueError(f"{path}: not a readable PyTorch checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(sd, dict):
        raise ValueError(f"{path}: expected a state dict (name -> tensor), got {type(sd).__name__}")
    return _torch_to_numpy(sd, path)


def _torch_to_numpy(tree, path):
    import torch

    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out[k] = _torch_to_numpy(v, path)
        elif isinstance(v, torch.Tensor):
            v = v.detach().cpu()
            out[k] = (v.float() if v.dtype == torch.bfloat16 else v).numpy()
        else:
            out[k] = v
    return out


def _flatten(tree, prefix=()):
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict) or hasattr(v, "items"):
            out.update(_flatten(v, prefix + (k,)))
        else:
            out[prefix + (k,)] = v
    return out


def _unflatten(flat):
    out = {}
    for key, v in flat.items():
        d = out
        for k in key[:-1]:
            d = d.setdefault(k, {})
        d[key[-1]] = v
    return out


def convert_pytorch_state_dict(state_dict, param_shapes, where, dtype=jnp.float32):
    """PyTorch diffusers state dict {name: array} -> Flax params matching param_shapes (an eval_shape tree).

    Uses diffusers' renaming (attention to_q/to_k/to_v/to_out.0 -> query/key/value/proj_attn, norm weight ->
    scale, conv OIHW -> HWIO, linear transposed). Raises ValueError naming `where` on missing, unexpected or
    mis-shaped entries.
    """
    from diffusers.models.modeling_flax_pytorch_utils import rename_key, rename_key_and_reshape_tensor

    shapes = _flatten(param_shapes)
    flat, unexpected = {}, []
    for name, tensor in state_dict.items():
        tensor = np.asarray(tensor)
        key = tuple(rename_key(name).split("."))
        fkey, ftensor = rename_key_and_reshape_tensor(key, tensor, shapes)
        if fkey not in shapes:
            unexpected.append(name)
            continue
        if tuple(ftensor.shape) != tuple(shapes[fkey].shape):
            raise ValueError(f"{where}: weight {name} has shape {tuple(tensor.shape)}, the model config expects "
                             f"{tuple(shapes[fkey].shape)} for {'/'.join(fkey)}")
        flat[fkey] = jnp.asarray(ftensor, dtype)
    missing = sorted("/".join(k) for k in shapes if k not in flat)
    if missing or unexpected:
        raise ValueError(f"{where}: weights do not match the config: {len(missing)} missing (e.g. {missing[:3]}), "
                         f"{len(unexpected)} unexpected (e.g. {sorted(unexpected)[:3]})")
    return _unflatten(flat)


def check_supported(config, unsupported, where, block_types=None):
    """Refuse config values the Flax class would silently ignore (ValueError naming file and key)."""
    for key, allowed in unsupported.items():
        if key in config and config[key] not in allowed and not (
            isinstance(config[key], (int, float)) and any(isinstance(a, (int, float)) and np.isclose(config[key], a)
                                                         for a in allowed if not isinstance(a, bool))
        ):
            raise ValueError(f"{where}: config {key}={config[key]!r} is not supported by the diffusers Flax "
                             f"classes (supported: {allowed})")
    if block_types is not None:
        for key in ("down_block_types", "up_block_types"):
            for b in config.get(key, ()):
                if b not in block_types:
                    raise ValueError(f"{where}: {key} entry {b!r} has no Flax implementation "
                                     f"(supported: {sorted(block_types)})")


def cast_floating(tree, dtype):
    """Cast every floating leaf of a pytree to dtype (integer leaves untouched)."""
    return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def load_diffusers_model(cls, folder, dtype=jnp.float32, unsupported=None, block_types=None, variant=None,
                         **module_overrides):
    """(module, params) of a diffusers Flax class from a local model folder (config.json + weights).

    module_overrides are passed to the Flax constructor (e.g. use_memory_efficient_attention=True).
    """
    from flax.serialization import msgpack_restore

    use_exact_gelu()
    require_dir(folder)
    cfg_path = os.path.join(folder, "config.json")
    config = read_json(cfg_path)
    check_supported(config, unsupported or {}, cfg_path, block_types)
    try:
        module = cls.from_config(config, dtype=dtype, **module_overrides)
    except (TypeError, ValueError, KeyError) as e:
        raise ValueError(f"{cfg_path}: cannot build {cls.__name__} from this config ({e})") from None
    if isinstance(module, tuple):
        module = module[0]
    try:
        shapes = jax.eval_shape(module.init_weights, jax.random.key(0))
    except (TypeError, ValueError, IndexError) as e:
        raise ValueError(f"{cfg_path}: inconsistent {cls.__name__} config ({str(e).splitlines()[0]})") from None
    path = weights_file(folder, variant)
    if path.endswith(".msgpack"):
        with open(path, "rb") as f:
            state = msgpack_restore(f.read())
        flat, shapes_flat = _flatten(state), _flatten(shapes)
        if set(flat) != set(shapes_flat):
            raise ValueError(f"{path}: Flax weights do not match {cfg_path} "
                             f"({len(set(shapes_flat) - set(flat))} missing, {len(set(flat) - set(shapes_flat))} "
                             f"unexpected)")
        params = _unflatten({k: jnp.asarray(v, dtype) for k, v in flat.items()})
    else:
        params = convert_pytorch_state_dict(read_state_dict(path), shapes, path, dtype)
    return module, params


def load_unet2d(folder, dtype=jnp.float32, **overrides):
    from diffusers import FlaxUNet2DConditionModel

    return load_diffusers_model(FlaxUNet2DConditionModel, folder, dtype, _UNET_UNSUPPORTED, _UNET_BLOCKS,
                                **overrides)


def load_vae(folder, dtype=jnp.float32):
    from diffusers import FlaxAutoencoderKL

    module, params = load_diffusers_model(FlaxAutoencoderKL, folder, dtype, _VAE_UNSUPPORTED,
                                          {"DownEncoderBlock2D", "UpDecoderBlock2D"})
    return module, params


def load_controlnet(folder, dtype=jnp.float32, **overrides):
    from diffusers import FlaxControlNetModel

    return load_diffusers_model(FlaxControlNetModel, folder, dtype, _CONTROLNET_UNSUPPORTED,
                                {"CrossAttnDownBlock2D", "DownBlock2D"}, **overrides)


def _transformers_weights(folder):
    for name in ("flax_model.msgpack", "model.safetensors", "pytorch_model.bin"):
        if os.path.isfile(os.path.join(folder, name)):
            return os.path.join(folder, name)
    raise ValueError(f"{folder}: no weights file (expected flax_model.msgpack, model.safetensors or "
                     f"pytorch_model.bin); found {sorted(os.listdir(folder))}")


def load_transformers_model(cls, folder, dtype=jnp.float32, return_unused=False):
    """(model, params) of a transformers Flax class (e.g. FlaxCLIPTextModel) from a local folder.

    The model is built with _do_init=False (no eager initialisation); PyTorch weights (model.safetensors
    without torch, pytorch_model.bin with it) are renamed with transformers' own
    `rename_key_and_reshape_tensor` against `model.params_shape_tree`. Missing parameters are an error.
    With return_unused=True also returns {name: array} of checkpoint entries the Flax class does not use
    (e.g. `visual_projection.weight` of a CLIPVisionModelWithProjection checkpoint).
    """
    from flax.serialization import msgpack_restore
    from transformers.modeling_flax_pytorch_utils import rename_key_and_reshape_tensor

    require_dir(folder)
    cfg_path = os.path.join(folder, "config.json")
    read_json(cfg_path)
    try:
        config = cls.config_class.from_pretrained(folder, local_files_only=True)
        model = cls(config, _do_init=False, dtype=dtype)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{cfg_path}: cannot build {cls.__name__} ({e})") from None
    shapes = _flatten(model.params_shape_tree)
    path = _transformers_weights(folder)
    prefix = cls.base_model_prefix
    flat, unused = {}, {}
    if path.endswith(".msgpack"):
        with open(path, "rb") as f:
            state = _flatten(msgpack_restore(f.read()))
        for k, v in state.items():
            key = k[1:] if k not in shapes and k[:1] == (prefix,) and k[1:] in shapes else k
            (flat if key in shapes else unused)[key] = v
        unused = {".".join(k): v for k, v in unused.items()}
    else:
        for name, tensor in read_state_dict(path).items():
            key = tuple(name.split("."))
            if key[0] == prefix and (prefix,) not in {k[:1] for k in shapes}:
                key = key[1:]
            fkey, ftensor = rename_key_and_reshape_tensor(key, np.asarray(tensor), shapes, prefix)
            if fkey not in shapes:
                unused[name] = np.asarray(tensor)
                continue
            if tuple(ftensor.shape) != tuple(shapes[fkey].shape):
                raise ValueError(f"{path}: weight {name} has shape {tuple(tensor.shape)}, {cfg_path} expects "
                                 f"{tuple(shapes[fkey].shape)}")
            flat[fkey] = ftensor
    missing = sorted("/".join(k) for k in shapes if k not in flat)
    if missing:
        raise ValueError(f"{path}: lacks {len(missing)} parameters of {cls.__name__} (e.g. {missing[:3]})")
    params = _unflatten({k: jnp.asarray(v, dtype if np.issubdtype(np.asarray(v).dtype, np.floating) else None)
                         for k, v in flat.items()})
    return (model, params, unused) if return_unused else (model, params)


def load_tokenizer(folder):
    from transformers import CLIPTokenizer

    require_dir(folder)
    try:
        return CLIPTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, TypeError) as e:
        raise ValueError(f"{folder}: cannot load a CLIP tokenizer ({e})") from None


def load_alphas_cumprod(folder):
    """alphas_cumprod [num_train_timesteps] float32 from a diffusers scheduler folder (scheduler_config.json).

    Built by diffusers' CommonSchedulerState from the config's beta schedule (the official code reads
    DDIMScheduler.alphas_cumprod; DDIM and DDPM share it).
    """
    from diffusers import FlaxDDIMScheduler
    from diffusers.schedulers.scheduling_utils_flax import CommonSchedulerState

    path = os.path.join(folder, "scheduler_config.json")
    config = read_json(path)
    if config.get("rescale_betas_zero_snr", False):
        raise ValueError(f"{path}: rescale_betas_zero_snr=True is not supported")
    if config.get("prediction_type", "epsilon") != "epsilon":
        raise ValueError(f"{path}: prediction_type {config.get('prediction_type')!r} is not supported: the SDS "
                         "formulas need an epsilon-predicting model")
    try:
        scheduler = FlaxDDIMScheduler.from_config(config, dtype=jnp.float32)
        if isinstance(scheduler, tuple):
            scheduler = scheduler[0]
        alphas = CommonSchedulerState.create(scheduler).alphas_cumprod
    except NotImplementedError as e:
        raise ValueError(f"{path}: {e}") from None
    return np.asarray(alphas, np.float32)
