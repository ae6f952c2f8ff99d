"""Diffusion priors and score distillation (four_d/priors/: sds, sd, zero123, video, controlnet, textual_inversion).

Variants:
  get_config()         the official Animate124 values (HeliosZhao/Animate124 `main`:
                       guidance/sd_utils.py, guidance/zero123_diffusers_utils.py, guidance/cn_utils.py,
                       scripts/animate124/run-{static,dynamic,cn}.sh, main.py defaults, and
                       textual-inversion/textual_inversion.py + scripts/textual_inversion/textual_inversion_sd.sh);
  get_config("paper")  the official values with the memory settings of the paper-size runs (video and
                       controlnet vae_frames_per_chunk 1: the same values, less memory; see the variant);
  get_config("tiny")   the sizes every test uses (small images, few steps); the formulas are the same.
Facts and their sources: ../shared/reference/animate124.md sections 3-5 and 9.

Every section is read by one prior: `sd` by four_d/priors/sd.py, `zero123` by zero123.py, `video` by
video.py, `controlnet` by controlnet.py, `textual_inversion` by textual_inversion.py. The weights of the
priors are never part of a config: each loader takes a local folder.

Conventions shared by the sections (four_d/priors/sds.py):
  t_range         (lo, hi) fractions of num_train_timesteps: t ~ U{int(N lo) .. int(N hi)} inclusive
                  (official: torch.randint(int(N lo), int(N hi) + 1)).
  cfg_form        "official": eps_c + s (eps_c - eps_u) (the Animate124 fork of stable-dreamfusion);
                  "upstream": eps_u + s (eps_c - eps_u) (stable-dreamfusion upstream, zero123, diffusers).
  weighting       "sds" 1 - alpha_bar_t (official everywhere), "uniform" 1, "fantasia3d"
                  sqrt(alpha_bar_t) (1 - alpha_bar_t) (threestudio's weighting_strategy).
  grad_clip       clamp of the latent gradient to [-c, c] (sd_utils train_step(grad_clip=...)); a value
                  <= 0 disables it, which is what every official call does. (The `--grad_clip 1` flag of
                  run-dynamic.sh clips the NeRF parameter gradients: configs/four_d.py optim.grad_clip.)
  loss_target     "mse": 0.5 ||z - sg(z - grad)||^2 / normaliser (official --new_sds); "x0": 0.5 ||z -
                  sg(x0_hat)||^2 / normaliser (cn_utils.py --grad_dyn).
  loss_reduction  "sum": normaliser = batch size (official default); "mean": normaliser = number of
                  latent elements (official --mean_sds, unused by the Animate124 scripts).
  dtype           compute/parameter dtype of the frozen prior: "float32" (official fp32 path) or
                  "bfloat16" (the official runs fp16 autocast; bfloat16 is the TPU/GPU-safe analogue).
"""

import ml_collections

CFG_FORMS = ("official", "upstream")
WEIGHTINGS = ("sds", "uniform", "fantasia3d")


def _section(**kw):
    s = ml_collections.ConfigDict()
    for k, v in kw.items():
        s[k] = v
    return s


def get_config(arg=None):
    if arg not in (None, "paper", "tiny"):
        raise ValueError(f"configs/priors.py: unknown variant {arg!r} (use 'tiny' or 'paper')")
    c = ml_collections.ConfigDict()

    # --- Stable Diffusion 1.5 (four_d/priors/sd.py; guidance/sd_utils.py, run-static.sh) -----------------
    c.sd = _section(
        image_size=512,  # official sd_size 512: render bilinearly resized (align_corners False) to 512
        guidance_scale=100.0,  # official --guidance_scale 100 (first slot, run-static.sh)
        cfg_form="official",  # official sd_utils: noise_pred_text + s * (noise_pred_text - noise_pred_uncond)
        t_range=(0.2, 0.6),  # official --t_range 0.2 0.6 (run-static.sh) -> t ~ U{200..600}
        weighting="sds",  # official w = 1 - alphas[t]
        lambda_guidance=1.0,  # official --lambda_guidance 1.0 (first slot) = grad_scale
        grad_clip=-1.0,  # official train_step(grad_clip=None): no latent clamp
        latent_sample=True,  # official encode_imgs: posterior.sample() (not the mean)
        loss_target="mse",  # official --new_sds: 0.5 * mse_sum(latents, (latents - grad).detach()) / B
        loss_reduction="sum",  # official (mean_sds off)
        negative_prompt="",  # official --negative '' (embedding order [negative, positive])
        view_suffixes=("front", "side", "back"),  # official f"{text}, {d} view" for d in front/side/back
        # Chunked attention in the UNet (use_memory_efficient_attention): the same values with less memory,
        # as the official xformers; off by default here (512 px fits; plain attention is faster on CPU).
        memory_efficient_attention=False,
        dtype="float32",
    )

    # --- Zero-1-to-3 XL (four_d/priors/zero123.py; guidance/zero123_diffusers_utils.py) ------------------
    c.zero123 = _section(
        image_size=256,  # official F.interpolate(pred_rgb, (256, 256), bilinear, align_corners False)
        guidance_scale=5.0,  # official --guidance_scale 100 5 (second slot)
        cfg_form="upstream",  # official noise_pred_uncond + s * (noise_pred_cond - noise_pred_uncond)
        t_range=(0.2, 0.6),  # official --t_range 0.2 0.6 static; --zero123_t_range 0.2 0.6 dynamic
        weighting="sds",  # official w = 1 - alphas[t]
        lambda_guidance=40.0,  # official --lambda_guidance 1.0 40 (second slot)
        grad_scale="angle",  # official --zero123_grad_scale angle: lambda * angle / (180 / n_refs); or "none"
        grad_clip=-1.0,  # official: no clamp on the zero123 gradient
        latent_sample=True,  # official encode_imgs: latent_dist.sample() * scaling_factor
        reference_latent_sample=True,  # official prepare_img_latents: latent_dist.sample(), NOT scaled
        reference_size=256,  # official cv2.resize(rgba, (256, 256), INTER_AREA), composited on white
        reference_polar=90.0,  # official ref_polars [default_polar 90]
        reference_azimuth=0.0,  # official ref_azimuths [default_azimuth 0]
        reference_radius=1.8,  # official ref_radii [default_radius 1.8]
        loss_target="mse",  # official --new_sds
        loss_reduction="sum",
        memory_efficient_attention=False,  # as sd
        dtype="float32",
    )

    # --- ModelScope text-to-video SDS (four_d/priors/video.py; sd_utils.py with 'ms' in the key) ----------
    c.video = _section(
        image_size=256,  # official sd_size = 256 when 'ms' is in the model path -> (1, 4, F, 32, 32)
        guidance_scale=100.0,  # official --guidance_scale 100 (first slot, run-dynamic.sh)
        cfg_form="official",  # same sd_utils train_step as the image SDS
        t_range=(0.02, 0.98),  # official --t_range 0.02 0.98 (run-dynamic.sh) -> t ~ U{20..980}
        weighting="sds",
        lambda_guidance=1.0,  # official --lambda_guidance 1.0 (first slot)
        grad_clip=-1.0,
        latent_sample=True,
        loss_target="mse",  # official --new_sds
        loss_reduction="sum",
        mean_frame=False,  # official --mean_frame off: the sum over all frames is divided by B only
        negative_prompt="",
        view_suffixes=("front", "side", "back"),  # the static-camera steps use view-blended prompts too
        # Chunked attention in the UNet3D (official: xformers); the same values with less memory.
        memory_efficient_attention=False,
        # Frames per VAE-encoder call under jax.checkpoint (lax.map over the chunks): the same values with less
        # memory (the encoder's activations over 16 frames at 256 px dominate the step, benchmarks/priors.py).
        # 0 = all frames in one call, as the official encode_imgs.
        vae_frames_per_chunk=0,
        dtype="float32",
    )

    # --- ControlNet-Tile SDS (four_d/priors/controlnet.py; guidance/cn_utils.py, run-cn.sh) --------------
    c.controlnet = _section(
        image_size=1024,  # official --cn_size 1024: render and condition bilinearly resized to 1024
        num_frames=2,  # official --cn_frames 2
        frame_method="even",  # official --cn_frame_method even: frames arange(0, F, F // cn_frames)
        guidance_scale=7.5,  # official --guidance_scale 100 5 7.5 (third slot)
        cfg_form="official",  # official cn_utils: noise_pred_text + s * (noise_pred_text - noise_pred_uncond)
        t_range=(0.2, 0.8),  # official --cn_t_range default [0.2, 0.8] -> t ~ U{200..800}, one per clip
        weighting="sds",
        lambda_guidance=1.0,  # official --lambda_guidance 1.0 40 1.0 (not applied on the grad_dyn path)
        grad_clip=-1.0,
        latent_sample=True,
        loss_target="x0",  # official --grad_dyn: target (z_t - sqrt(1 - a) eps_hat) / sqrt(a)
        loss_reduction="sum",  # official / latents.shape[0] = number of selected frames
        conditioning_scale=1.0,  # official --cn_scale 1.0
        controlnet_prompt="best quality, high resolution",  # official --cn_cn_text
        negative_prompt="",
        # Chunked attention in the ControlNet and the UNet (official: xformers). At 1024 px the full
        # self-attention scores alone are ~34 GB per layer in float32 (benchmarks/priors.py), so it is on.
        memory_efficient_attention=True,
        # Frames per VAE-encoder call under jax.checkpoint, as video.vae_frames_per_chunk (common.encode_frames):
        # 0 = both frames in one call, as the official encode_imgs. A memory setting, not in the official code:
        # the same latents and gradients (tests/test_priors_chunked.py); the paper variant uses 1.
        vae_frames_per_chunk=0,
        dtype="float32",
    )

    # --- textual inversion (four_d/priors/textual_inversion.py; textual-inversion/textual_inversion.py) ---
    c.textual_inversion = _section(
        steps=3000,  # official --max_train_steps 3000
        batch_size=16,  # official --train_batch_size 16
        resolution=512,  # official --resolution 512
        learning_rate=1e-4,  # official --learning_rate 1e-4, no --scale_lr, --lr_scheduler constant, warmup 0
        adam_b1=0.9,  # official --adam_beta1 0.9 (torch.optim.AdamW)
        adam_b2=0.999,  # official --adam_beta2 0.999
        weight_decay=1e-2,  # official --adam_weight_decay 1e-2
        adam_eps=1e-8,  # official --adam_epsilon 1e-8
        templates="object",  # official --learnable_property object: imagenet_templates_small
        save_steps=500,  # official --save_steps 500: learned_embeds-steps-{N}.bin
        # Augmentations (official --use_augmentations, TextualInversionDataset.aug_transform):
        aug_resize=1.25,  # Resize(int(512 * 5/4)) + CenterCrop(int(512 * 5/4))
        aug_rotate_p=0.75,  # RandomApply([RandomRotation(10, fill=255), CenterCrop(int(512*5/6)), Resize(512)], 0.75)
        aug_rotate_degrees=10.0,
        aug_rotate_crop=5.0 / 6.0,
        aug_crop_scale=(0.85, 1.15),  # RandomResizedCrop(512, scale=(0.85, 1.15)), ratio (3/4, 4/3)
        aug_crop_ratio=(3.0 / 4.0, 4.0 / 3.0),
        aug_jitter_p=0.75,  # RandomApply([ColorJitter(0.04, 0.04, 0.04, 0.04)], p=0.75)
        aug_jitter=0.04,
        aug_gray_p=0.1,  # RandomGrayscale(p=0.10)
        aug_blur_p=0.1,  # RandomApply([GaussianBlur(5, (0.1, 2))], p=0.10)
        aug_blur_kernel=5,
        aug_blur_sigma=(0.1, 2.0),
        aug_flip_p=0.5,  # RandomHorizontalFlip()
        # Official quirk: with --use_augmentations the dataset ends in ToTensor() (values in [0, 1]) and the
        # training loop feeds them to the VAE unchanged; without augmentations images are mapped to [-1, 1].
        # False reproduces the official [0, 1] input; True maps to [-1, 1] as the VAE expects.
        normalize_augmented=False,
        dtype="float32",
    )

    if arg == "tiny":
        c.sd.image_size = 64
        c.zero123.image_size = 32
        c.zero123.reference_size = 32
        c.video.image_size = 32
        c.controlnet.image_size = 64
        c.textual_inversion.steps = 3
        c.textual_inversion.batch_size = 2
        c.textual_inversion.resolution = 64
        c.textual_inversion.save_steps = 2
    elif arg == "paper":
        # Memory settings, not official knobs (the official code encodes all frames in one call): one frame per
        # VAE-encoder call under jax.checkpoint. The same latents and gradients (tests/test_priors_chunked.py,
        # tests/test_priors_video.py); they bring the coarse and fine steps under 40 GB at the paper's sizes
        # (benchmarks/stages_memory.py, benchmarks/README.md).
        c.video.vae_frames_per_chunk = 1
        c.controlnet.vae_frames_per_chunk = 1
    return c


# Ranges of the values above, checked before any compute (configs/validate.py). Every number, flag and choice
# needs a rule here (tests/test_config_ranges.py checks it). The four SDS priors share these keys.
_SDS_RULES = {
    "cfg_form": "one of official|upstream",
    "dtype": "one of float32|bfloat16|float16",
    "grad_clip": "> -inf",  # <= 0 disables (official --grad_clip -1)
    "guidance_scale": ">= 0",
    "image_size": "int >= 8",
    "lambda_guidance": ">= 0",
    "latent_sample": "bool",
    "loss_reduction": "one of sum|mean",
    "loss_target": "one of mse|x0",
    "memory_efficient_attention": "bool",
    "t_range": "each [0, 1]",
    "weighting": "one of sds|uniform|fantasia3d",
}
RANGES = {f"{prior}.{key}": rule for prior in ("sd", "zero123", "video", "controlnet")
          for key, rule in _SDS_RULES.items()}
RANGES.update({
    "controlnet.conditioning_scale": ">= 0",
    "controlnet.frame_method": "one of even|random",
    "controlnet.num_frames": "int >= 1",
    "video.mean_frame": "bool",
    "video.vae_frames_per_chunk": "int >= 0",  # 0 = all frames at once (official)
    "controlnet.vae_frames_per_chunk": "int >= 0",  # 0 = all frames at once (official)
    "zero123.grad_scale": "one of angle|none",
    "zero123.reference_azimuth": "[-360, 360]",
    "zero123.reference_polar": "[0, 180]",
    "zero123.reference_radius": "> 0",
    "zero123.reference_size": "int >= 8",
    "zero123.reference_latent_sample": "bool",
    "textual_inversion.adam_b1": "[0, 1)",
    "textual_inversion.adam_b2": "[0, 1)",
    "textual_inversion.adam_eps": ">= 0",
    "textual_inversion.aug_blur_kernel": "int >= 1",
    "textual_inversion.aug_blur_p": "[0, 1]",
    "textual_inversion.aug_blur_sigma": "each > 0",
    "textual_inversion.aug_crop_ratio": "each > 0",
    "textual_inversion.aug_crop_scale": "each > 0",
    "textual_inversion.aug_flip_p": "[0, 1]",
    "textual_inversion.aug_gray_p": "[0, 1]",
    "textual_inversion.aug_jitter": ">= 0",
    "textual_inversion.aug_jitter_p": "[0, 1]",
    "textual_inversion.aug_resize": "> 0",
    "textual_inversion.aug_rotate_crop": "(0, 1]",
    "textual_inversion.aug_rotate_degrees": "[0, 180]",
    "textual_inversion.aug_rotate_p": "[0, 1]",
    "textual_inversion.batch_size": "int >= 1",
    "textual_inversion.dtype": "one of float32|bfloat16|float16",
    "textual_inversion.learning_rate": "> 0",
    "textual_inversion.normalize_augmented": "bool",
    "textual_inversion.resolution": "int >= 8",
    "textual_inversion.save_steps": "int >= 1",
    "textual_inversion.steps": "int >= 1",
    "textual_inversion.templates": "one of object|style",
    "textual_inversion.weight_decay": ">= 0",
})
