"""The diffusion priors of Animate124's three stages, loaded from one weights folder and bound to the prompts.

    check_weights_dir(weights, ("static", "coarse", "fine"), token_prompt)      # before any compute
    priors = load_stage_priors(weights, "a high-resolution DSLR image of a panda", "a panda is dancing",
                               "a <token> is dancing", rgba, get_config(), ("static", "coarse", "fine"))
    params, fn = priors["zero123"]
    loss, aux = fn(params, key, renders, polar, azimuth, radius)                # inside the jitted stage step

The weights folder (`four-d animate --weights DIR`) holds local diffusers-layout folders; nothing is downloaded:

    sd15/             Stable Diffusion 1.5 pipeline (unet/ vae/ text_encoder/ tokenizer/ scheduler/): the
                      static stage's image prior, and the UNet/VAE/text encoder of the fine stage's ControlNet
    zero123-xl/       Zero-1-to-3 XL (unet/ vae/ image_encoder/ scheduler/ + cc_projection/ or
                      clip_camera_projection/): every stage
    modelscope/       ModelScope text-to-video 1.7B pipeline (unet/ = UNet3DConditionModel, vae/ ...): coarse, fine
    controlnet-tile/  control_v11f1e_sd15_tile (config.json + weights): fine
    learned_embeds.safetensors | learned_embeds.bin   textual inversion (`four-d invert`): fine, with a token prompt

Which prior each stage uses (official scripts/animate124/run-{static,dynamic,cn}.sh):
    static: "sd" (SD 1.5, lambda 1, CFG 100) + "zero123" (lambda 40, CFG 5)
    coarse: "video" (ModelScope, CFG 100) + "zero123" (on frame 0 of clips from t = 0)
    fine:   "video" + "zero123" (continued) + "controlnet" (ControlNet-Tile on SD 1.5, CFG 7.5)

Contract with the stage steps (four_d/stages.py): a Prior is (params, fn); params is a pytree of frozen arrays
that the jitted step takes as an ARGUMENT (never closed over, so the compiled step holds no weights as
constants); fn(params, key, *inputs, **knobs) -> (loss, aux) is traceable inside the step:

    "sd":         fn(params, key, images [B, H, W, 3], azimuth_deg [B])            view-blended prompt (static)
    "zero123":    fn(params, key, images [B, H, W, 3], polar_deg [B], azimuth_deg [B], radius [B])
    "video":      fn(params, key, clips [B, F, H, W, 3], azimuth_deg [B], use_view=False)
    "controlnet": fn(params, key, frames [B, F, H, W, 3], cond_frames [B, F, H, W, 3], azimuth_deg [B],
                     use_view=False)

Images are in [0, 1], float32, channels last, any size (each prior resizes as official). Cameras are ABSOLUTE
and in four_d's convention (four_d/cameras.py: polar from +y, azimuth from +z towards +x, degrees). The zero123
fn forms the token with four_d.cameras.zero123_camera_token against the reference camera (config zero123
reference_polar / _azimuth / _radius, read here in four_d's convention: the camera the reference view is
rendered from) and the 40 x angle / 180 weight from the angle between the two view directions. `use_view` of
the video / ControlNet priors selects the front/side/back-blended prompt (official: with a static camera) or the
plain one (official --no_view_text with a dynamic camera, the default). The ControlNet fn picks the frames the
official picks (config controlnet num_frames / frame_method: frames {0, 8} of 16) from each clip and the same
frames of the frozen coarse render (the tile condition); with B clips the loss is the mean over the clips.
knobs (min_step, max_step, guidance_scale, grad_scale, grad_clip) pass through to the prior for annealing.

Prompts (official suffixes, keyword arguments of load_stage_priors): the static prompt gets ", 8k, good quality"
(run-static.sh), the motion prompt and the token prompt ", high-resolution, 8k, good quality" (run-dynamic.sh,
run-cn.sh). In the token prompt the literal "<token>" is replaced by the learned token's name (official
run_data scripts: "a <token> is dancing"); without a token prompt the fine stage's UNet prompt is the motion
prompt. All embeddings (with the view-dependent variants) and zero123's reference conditioning (CLIP image
embedding + VAE latent of the reference composited on white) are computed once here and stored in params.
"""

import os

import jax
import jax.numpy as jnp

STAGES = ("static", "coarse", "fine")
STAGE_PRIORS = {  # official --guidance per stage script
    "static": ("sd", "zero123"),
    "coarse": ("video", "zero123"),
    "fine": ("video", "zero123", "controlnet"),
}
FOLDERS = {"sd": "sd15", "zero123": "zero123-xl", "video": "modelscope", "controlnet": "controlnet-tile"}
LEARNED_EMBEDS = ("learned_embeds.safetensors", "learned_embeds.bin")
TOKEN_PLACEHOLDER = "<token>"  # official run_data scripts: --cn_text "a <token> is dancing"
STATIC_SUFFIX = ", 8k, good quality"  # official run-static.sh: TEXT="$4, 8k, good quality"
MOTION_SUFFIX = ", high-resolution, 8k, good quality"  # official run-dynamic.sh / run-cn.sh PROMPT and CN_PROMPT

_DIFFUSERS = ("diffusion_flax_model.msgpack", "diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
_DIFFUSERS_SHARDED = _DIFFUSERS + ("diffusion_pytorch_model.safetensors.index.json",
                                   "diffusion_pytorch_model.bin.index.json")
_TRANSFORMERS = ("flax_model.msgpack", "model.safetensors", "pytorch_model.bin")
_TOKENIZER = ("vocab.json", "merges.txt")
# (subfolder, config file, accepted weight files: any one; None = no weights) of each model folder
_PIPELINE = (("unet", "config.json", _DIFFUSERS), ("vae", "config.json", _DIFFUSERS),
             ("text_encoder", "config.json", _TRANSFORMERS), ("tokenizer", None, None),
             ("scheduler", "scheduler_config.json", None))
_LAYOUTS = {
    "sd": _PIPELINE,
    "video": (("unet", "config.json", _DIFFUSERS_SHARDED),) + _PIPELINE[1:],
    "zero123": (("unet", "config.json", _DIFFUSERS), ("vae", "config.json", _DIFFUSERS),
                ("image_encoder", "config.json", _TRANSFORMERS), ("scheduler", "scheduler_config.json", None)),
    "controlnet": (("", "config.json", _DIFFUSERS),),
}
_WHAT = {"sd": "Stable Diffusion 1.5 (diffusers StableDiffusionPipeline layout)",
         "zero123": "Zero-1-to-3 XL (diffusers zero123 layout)",
         "video": "ModelScope text-to-video 1.7B (diffusers TextToVideoSDPipeline layout)",
         "controlnet": "ControlNet-v1.1 Tile for SD 1.5 (config.json + weights)"}
_WHERE = "four_d/stage_priors.py"


def check_stages(stages):
    """The stages as a tuple in official order; ValueError for an unknown or empty list."""
    if isinstance(stages, str):
        stages = [s.strip() for s in stages.split(",") if s.strip()]
    stages = tuple(stages)
    unknown = [s for s in stages if s not in STAGES]
    if unknown or not stages:
        raise ValueError(f"--stages: unknown or empty stage list {list(stages)} (use a subset of {','.join(STAGES)})")
    return tuple(s for s in STAGES if s in stages)


def needed_priors(stages):
    """The prior kinds the stages use, in a fixed order."""
    stages = check_stages(stages)
    return tuple(k for k in ("sd", "zero123", "video", "controlnet") if any(k in STAGE_PRIORS[s] for s in stages))


def needed_folders(stages):
    """The subfolders of the weights folder the stages read (the fine stage's ControlNet also needs sd15/)."""
    kinds = needed_priors(stages)
    names = [FOLDERS[k] for k in kinds]
    if "controlnet" in kinds and FOLDERS["sd"] not in names:
        names.insert(0, FOLDERS["sd"])
    return tuple(names)


def _check_model_folder(folder, kind, stages):
    users = [s for s in stages if kind in STAGE_PRIORS[s] or (kind == "sd" and "controlnet" in STAGE_PRIORS[s])]
    need = f"the {'/'.join(users)} stage needs {_WHAT[kind]}"
    if not os.path.isdir(folder):
        raise ValueError(f"{folder}: folder missing ({need})")
    for sub, config_name, weights in _LAYOUTS[kind]:
        path = os.path.join(folder, sub) if sub else folder
        if not os.path.isdir(path):
            raise ValueError(f"{path}: folder missing, {folder} is incomplete ({need})")
        if config_name and not os.path.isfile(os.path.join(path, config_name)):
            raise ValueError(f"{os.path.join(path, config_name)}: file missing, {folder} is incomplete ({need})")
        if weights and not any(os.path.isfile(os.path.join(path, w)) for w in weights):
            raise ValueError(f"{path}: no weights file (expected one of {', '.join(weights)}), {folder} is "
                             f"incomplete ({need})")
        if sub == "tokenizer":
            for name in _TOKENIZER:
                if not os.path.isfile(os.path.join(path, name)):
                    raise ValueError(f"{os.path.join(path, name)}: file missing, {folder} is incomplete ({need})")
    if kind == "zero123":
        from four_d.priors.zero123 import PROJECTION_FOLDERS

        found = [n for n in PROJECTION_FOLDERS if os.path.isdir(os.path.join(folder, n))]
        if not found:
            raise ValueError(f"{folder}: no camera projection folder ({' or '.join(PROJECTION_FOLDERS)}), the "
                             f"folder is incomplete ({need})")
        proj = os.path.join(folder, found[0])
        if not any(os.path.isfile(os.path.join(proj, w)) for w in _DIFFUSERS):
            raise ValueError(f"{proj}: no weights file (expected one of {', '.join(_DIFFUSERS)}), {folder} is "
                             f"incomplete ({need})")


def learned_embeds_file(weights_dir):
    """weights_dir/learned_embeds.safetensors (preferred: no torch needed) or .bin; None when neither exists."""
    for name in LEARNED_EMBEDS:
        path = os.path.join(weights_dir, name)
        if os.path.isfile(path):
            return path
    return None


def check_weights_dir(path, stages, token_prompt=None):
    """Check, before any compute, that the weights folder holds every model the stages read.

    Only the folder structure is checked (subfolders, config files, a weights file each; the textual-inversion
    file when a token prompt is given and the fine stage runs): cheap, no weights are read. The first problem is
    a ValueError naming the missing or incomplete path and the stage that needs it. Returns
    dict(kind -> folder) of the priors the stages use (plus "learned_embeds" -> file when used).
    """
    stages = check_stages(stages)
    if path is None or not os.path.isdir(path):
        raise ValueError(f"{path}: --weights folder not found (it must hold {', '.join(needed_folders(stages))}/)")
    kinds = needed_priors(stages)
    out = {}
    if "controlnet" in kinds:
        kinds = ("sd",) + kinds if "sd" not in kinds else kinds
    for kind in kinds:
        folder = os.path.join(path, FOLDERS[kind])
        _check_model_folder(folder, kind, stages)
        out[kind] = folder
    if token_prompt is not None and "fine" in stages:
        if not isinstance(token_prompt, str) or not token_prompt.strip():
            raise ValueError("--token-prompt: must be a non-empty prompt such as 'a <token> is dancing'")
        file = learned_embeds_file(path)
        if file is None:
            raise ValueError(f"{os.path.join(path, LEARNED_EMBEDS[0])}: file missing (or {LEARNED_EMBEDS[1]}): "
                             "the token prompt needs the textual-inversion embedding (four-d invert)")
        out["learned_embeds"] = file
    return out


def token_prompt_text(token_prompt, token):
    """The token prompt with "<token>" replaced by the learned token (official); the token must then appear."""
    text = token_prompt.replace(TOKEN_PLACEHOLDER, token)
    if token not in text:
        raise ValueError(f"--token-prompt: {token_prompt!r} uses neither {TOKEN_PLACEHOLDER!r} nor the learned token "
                         f"{token!r} (the textual-inversion embedding would be unused)")
    return text


def _priors_config(config):
    """configs/priors.py's ConfigDict, given it or a config holding it as `.priors`."""
    if config is None:
        from configs.priors import get_config

        return get_config()
    if hasattr(config, "sd") and hasattr(config, "zero123"):
        return config
    if hasattr(config, "priors"):
        return config.priors
    raise ValueError(f"{_WHERE}: config must be configs/priors.py's get_config() (sections sd, zero123, video, "
                     "controlnet) or hold it as config.priors")


def _check_prompt(name, text):
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"{name}: must be a non-empty prompt, got {text!r}")


def _place(tree, mesh):
    from four_d.priors import common

    # ShapeDtypeStructs pass through: benchmarks/stages_memory.py builds Priors of shapes only (no weights)
    tree = jax.tree.map(lambda x: x if isinstance(x, jax.ShapeDtypeStruct) else jnp.asarray(x), tree)
    return tree if mesh is None else common.replicate(tree, mesh)


# ---- one Prior per kind -----------------------------------------------------------------------------------


def sd_prior(model, params, sds, embeddings, mesh=None):
    """("sd") Prior of a loaded SD 1.5: fn(params, key, images [B, H, W, 3], azimuth [B]) with the view-blended
    prompt (official static stage: view-dependent text always on)."""
    p = _place(dict(unet=params["unet"], vae=params["vae"], embeddings=embeddings), mesh)

    def fn(p, key, images, azimuth, **knobs):
        return sds(dict(unet=p["unet"], vae=p["vae"]), key, images, p["embeddings"], azimuth, True, **knobs)

    return p, fn


def zero123_prior(model, params, sds, reference, ref_polar, ref_azimuth, ref_radius, mesh=None):
    """("zero123") Prior: fn(params, key, images, polar [B], azimuth [B], radius [B]) with ABSOLUTE cameras in
    four_d's convention; the token is four_d.cameras.zero123_camera_token against the reference camera
    (params["reference_camera"] = [polar, azimuth, radius], an array, so a stage may change it without a
    recompile), the angle for the 40 x angle / 180 weight is recovered from the token
    (priors.zero123.camera_from_token: the angle between two view directions depends on the polar angles and
    |d azimuth| only, so it is the same in both conventions)."""
    from four_d.cameras import zero123_camera_token
    from four_d.priors.zero123 import camera_from_token

    p = _place(dict(unet=params["unet"], vae=params["vae"], cc_projection=params["cc_projection"],
                    reference=dict(clip=reference["clip"], latent=reference["latent"]),
                    reference_camera=jnp.array([ref_polar, ref_azimuth, ref_radius], jnp.float32)), mesh)

    def fn(p, key, images, polar, azimuth, radius, **knobs):
        b = images.shape[0]
        polar, azimuth, radius = (jnp.broadcast_to(jnp.asarray(v, jnp.float32), (b,)) for v in (polar, azimuth, radius))
        ref = p["reference_camera"]
        token = zero123_camera_token(polar, azimuth, radius, ref[0], ref[1], ref[2])
        camera = camera_from_token(token, ref[0], ref[1], ref[2])
        model_p = dict(unet=p["unet"], vae=p["vae"], cc_projection=p["cc_projection"])
        return sds(model_p, key, images, p["reference"], camera, **knobs)

    return p, fn


def video_prior(model, params, sds, embeddings, mesh=None):
    """("video") Prior: fn(params, key, clips [B, F, H, W, 3], azimuth [B], use_view=False)."""
    p = _place(dict(unet=params["unet"], vae=params["vae"], embeddings=embeddings), mesh)

    def fn(p, key, clips, azimuth, use_view=False, **knobs):
        if getattr(clips, "ndim", 0) != 5:
            raise ValueError(f"{_WHERE} video prior: clips must be [B, F, H, W, 3], got "
                             f"{getattr(clips, 'shape', None)}")
        return sds(dict(unet=p["unet"], vae=p["vae"]), key, clips, p["embeddings"], azimuth, use_view, **knobs)

    return p, fn


def controlnet_prior(model, params, sds, embeddings, cn_embeddings, config, mesh=None):
    """("controlnet") Prior: fn(params, key, frames [B, F, H, W, 3], cond_frames [B, F, H, W, 3], azimuth [B],
    use_view=False). The official frames of each clip are selected here (controlnet.config_frames)."""
    from four_d.priors import controlnet as cn_lib

    p = _place(dict(unet=params["unet"], vae=params["vae"], controlnet=params["controlnet"], embeddings=embeddings,
                    cn_embeddings=cn_embeddings), mesh)

    def fn(p, key, frames, cond_frames, azimuth, use_view=False, **knobs):
        for name, x in (("frames", frames), ("cond_frames", cond_frames)):
            if getattr(x, "ndim", 0) != 5 or x.shape[-1] != 3:
                raise ValueError(f"{_WHERE} controlnet prior: {name} must be [B, F, H, W, 3], got "
                                 f"{getattr(x, 'shape', None)}")
        if frames.shape[:2] != cond_frames.shape[:2]:
            raise ValueError(f"{_WHERE} controlnet prior: frames {frames.shape} and cond_frames {cond_frames.shape} "
                             "differ in clips or frames")
        b, f = frames.shape[:2]
        azimuth = jnp.broadcast_to(jnp.asarray(azimuth, jnp.float32), (b,))
        model_p = dict(unet=p["unet"], vae=p["vae"], controlnet=p["controlnet"])
        keys = [key] if b == 1 else list(jax.random.split(key, b))
        losses, auxes = [], []
        for i in range(b):
            k_sel, k_sds = (jax.random.split(keys[i]) if config.frame_method == "random" else (None, keys[i]))
            idx = cn_lib.config_frames(f, config, k_sel)
            loss, aux = sds(model_p, k_sds, frames[i][idx], cond_frames[i][idx], p["embeddings"], azimuth[i],
                            p["cn_embeddings"], use_view, **knobs)
            losses.append(loss)
            auxes.append(aux)
        if b == 1:
            return losses[0], auxes[0]
        return jnp.mean(jnp.stack(losses)), jax.tree.map(lambda *a: jnp.stack(a), *auxes)

    return p, fn


# ---- all of them ------------------------------------------------------------------------------------------


def load_stage_priors(weights_dir, prompt, motion_prompt, token_prompt, reference_rgba, config, stages, mesh=None, *,
                      seed=0, static_suffix=STATIC_SUFFIX, motion_suffix=MOTION_SUFFIX):
    """dict kind -> (params, fn) of the priors the stages use (module docstring: contract, folders, prompts).

    weights_dir: the --weights folder (checked first by check_weights_dir); prompt: the static prompt (SD 1.5);
    motion_prompt: the video prompt (and the ControlNet UNet prompt without token_prompt); token_prompt: the fine
    stage's textual-inversion prompt ("a <token> is dancing") or None; reference_rgba: [H, W, 4] (or composited
    RGB [H, W, 3]) uint8 or float in [0, 1], the preprocessed reference (zero123's condition); config:
    configs/priors.py get_config(variant) (or a config holding it as .priors); stages: subset of static, coarse,
    fine; mesh: a Mesh with a "data" axis (params replicated on it, the priors' batches split over it); seed: the
    zero123 reference latent's posterior sample (official prepare_img_latents samples it once).
    """
    from four_d.priors import common
    from four_d.priors import controlnet as cn_lib
    from four_d.priors import sd as sd_lib
    from four_d.priors import video as video_lib
    from four_d.priors import zero123 as z_lib

    stages = check_stages(stages)
    cfg = _priors_config(config)
    kinds = needed_priors(stages)
    if "sd" in kinds:
        _check_prompt("--prompt", prompt)
    if "video" in kinds or "controlnet" in kinds:
        _check_prompt("--motion-prompt", motion_prompt)
    folders = check_weights_dir(weights_dir, stages, token_prompt)
    reference = None
    if "zero123" in kinds:
        common.as_numpy_image(reference_rgba, f"{_WHERE} reference_rgba")  # shape / range, before loading
    priors = {}
    if "sd" in kinds:
        model, params, sds = sd_lib.build_sd_prior(folders["sd"], cfg.sd, mesh)
        emb = sd_lib.config_prompt_embeddings(model, params, prompt + static_suffix, cfg.sd)
        priors["sd"] = sd_prior(model, params, sds, emb, mesh)
    if "zero123" in kinds:
        zc = cfg.zero123
        model, params, sds = z_lib.build_zero123_prior(folders["zero123"], zc, mesh)
        reference = z_lib.prepare_reference(model, params, reference_rgba, jax.random.key(seed), zc)
        priors["zero123"] = zero123_prior(model, params, sds, reference, zc.reference_polar, zc.reference_azimuth,
                                          zc.reference_radius, mesh)
    if "video" in kinds:
        model, params, sds = video_lib.build_video_prior(folders["video"], cfg.video, mesh)
        emb = sd_lib.config_prompt_embeddings(model, params, motion_prompt + motion_suffix, cfg.video)
        priors["video"] = video_prior(model, params, sds, emb, mesh)
    if "controlnet" in kinds:
        cc = cfg.controlnet
        learned = folders.get("learned_embeds")
        model, params, sds = cn_lib.build_controlnet_prior(folders["sd"], folders["controlnet"], cc, learned, mesh)
        text = motion_prompt
        if learned is not None:
            from four_d.priors.textual_inversion import read_learned_embeds

            (token,) = read_learned_embeds(learned)
            text = token_prompt_text(token_prompt, token)
        emb = model.sd.prompt_embeddings(params, text + motion_suffix, cc.negative_prompt)
        cn_emb = model.controlnet_embeddings(params, cc)
        priors["controlnet"] = controlnet_prior(model, params, sds, emb, cn_emb, cc, mesh)
    return priors

