"""Tiny random diffusion models made with the diffusers / transformers PyTorch classes, saved once per test
process with save_pretrained in the real on-disk layouts (tests/test_priors_*.py load them back through
four_d.priors' loaders and compare with the PyTorch outputs).

Not a test module (no test_ prefix): imported by the prior tests. torch is imported here, so only tests use it.
"""

import atexit
import functools
import json
import os
import shutil
import tempfile

import numpy as np
import torch

# Tiny sizes: UNet latents 8x8 from 64x64 renders (VAE factor 8 as in SD), text width 32.
HIDDEN = 32
UNET = dict(sample_size=8, block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=HIDDEN,
            attention_head_dim=8, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), norm_num_groups=32)
# One level only (no down/upsampling): the fastest UNet to compile, for steps that need many compiles.
UNET1 = dict(UNET, block_out_channels=(32,), down_block_types=("CrossAttnDownBlock2D",),
             up_block_types=("CrossAttnUpBlock2D",))
VAE = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8, 8, 8), layers_per_block=1,
           norm_num_groups=4, sample_size=64, down_block_types=("DownEncoderBlock2D",) * 4,
           up_block_types=("UpDecoderBlock2D",) * 4)

_ROOT = None


def root():
    global _ROOT
    if _ROOT is None:
        _ROOT = tempfile.mkdtemp(prefix="cine-jax-priors-")
        atexit.register(shutil.rmtree, _ROOT, True)
    return _ROOT


def _seed(seed):
    torch.manual_seed(seed)


def randomize(module, seed, scale=0.2):
    """Non-trivial random weights (diffusers zero-initialises some output convs, which would hide bugs)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(scale * torch.randn(p.shape, generator=g))
    return module.eval()


def write_tokenizer(folder):
    """A CLIPTokenizer with a tiny BPE vocabulary (letters, digits, a few merges) saved in folder."""
    from transformers import CLIPTokenizer

    os.makedirs(folder, exist_ok=True)
    chars = list("abcdefghijklmnopqrstuvwxyz0123456789,.<>_")
    vocab = ["<|startoftext|>", "<|endoftext|>"] + chars + [c + "</w>" for c in chars]
    merges = ["#version: 0.2", "a n", "p an", "pan d", "v i", "vi e", "vie w</w>"]
    vocab += ["an", "pan", "pand", "vi", "vie", "view</w>"]
    tmp = tempfile.mkdtemp(dir=root())
    with open(os.path.join(tmp, "vocab.json"), "w") as f:
        json.dump({t: i for i, t in enumerate(vocab)}, f)
    with open(os.path.join(tmp, "merges.txt"), "w") as f:
        f.write("\n".join(merges) + "\n")
    # 77 as CLIP: character-level templates plus the placeholder token fit without truncation
    tok = CLIPTokenizer(os.path.join(tmp, "vocab.json"), os.path.join(tmp, "merges.txt"), model_max_length=77)
    tok.save_pretrained(folder)
    return tok


def text_config(vocab_size):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(vocab_size=vocab_size, hidden_size=HIDDEN, intermediate_size=37, num_hidden_layers=2,
                          num_attention_heads=4, max_position_embeddings=77, projection_dim=HIDDEN,
                          bos_token_id=0, eos_token_id=1, pad_token_id=1)


def scheduler():
    from diffusers import DDIMScheduler

    # SD 1.5's scheduler_config.json values.
    return DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                         set_alpha_to_one=False, steps_offset=1, num_train_timesteps=1000)


@functools.cache
def sd_folder(safe=True):
    """A tiny SD 1.x pipeline folder (unet/, vae/, text_encoder/, tokenizer/, scheduler/, model_index.json)."""
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    folder = os.path.join(root(), "sd-safe" if safe else "sd-bin")
    tok = write_tokenizer(os.path.join(root(), "tok-tmp"))
    _seed(0)
    unet = randomize(UNet2DConditionModel(**UNET1), 1)
    vae = randomize(AutoencoderKL(**VAE), 2, scale=0.15)
    text = randomize(CLIPTextModel(text_config(len(tok))), 3)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tok, unet=unet, scheduler=scheduler(),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder, safe_serialization=safe)
    return folder


@functools.cache
def loaded_sd():
    """(StableDiffusion, params) of sd_folder() through our loader, shared by the prior tests of a process."""
    from four_d.priors import sd as sdm

    return sdm.load_stable_diffusion(sd_folder(True))


@functools.cache
def torch_sd(safe=True):
    """The PyTorch modules of sd_folder(safe), loaded back with diffusers/transformers (float32, eval)."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    f = sd_folder(safe)
    return dict(unet=UNet2DConditionModel.from_pretrained(f, subfolder="unet").eval(),
                vae=AutoencoderKL.from_pretrained(f, subfolder="vae").eval(),
                text_encoder=CLIPTextModel.from_pretrained(os.path.join(f, "text_encoder")).eval(),
                tokenizer=CLIPTokenizer.from_pretrained(os.path.join(f, "tokenizer")),
                scheduler=DDIMScheduler.from_pretrained(f, subfolder="scheduler"))


# A tiny UNet3DConditionModel (two levels, 8 groups): latents 4x4 from 32 px frames (the tiny VAE's factor 8).
UNET3D = dict(sample_size=4, block_out_channels=(16, 32), layers_per_block=1, cross_attention_dim=HIDDEN,
              attention_head_dim=8, norm_num_groups=8, down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
              up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"))


@functools.cache
def video_folder():
    """A tiny ModelScope text-to-video pipeline folder (TextToVideoSDPipeline.save_pretrained: unet/ holds a
    UNet3DConditionModel, vae/, text_encoder/, tokenizer/, scheduler/, model_index.json), as
    damo-vilab/text-to-video-ms-1.7b."""
    from diffusers import AutoencoderKL, TextToVideoSDPipeline, UNet3DConditionModel
    from transformers import CLIPTextModel

    folder = os.path.join(root(), "text-to-video")
    tok = write_tokenizer(os.path.join(root(), "tok-video-tmp"))
    _seed(3)
    # every parameter re-drawn: the UNet3D's zero-initialised temporal convolutions must not hide bugs
    unet = randomize(UNet3DConditionModel(**UNET3D), 31, scale=0.15)
    vae = randomize(AutoencoderKL(**VAE), 32, scale=0.15)
    text = randomize(CLIPTextModel(text_config(len(tok))), 33)
    pipe = TextToVideoSDPipeline(vae=vae, text_encoder=text, tokenizer=tok, unet=unet, scheduler=scheduler())
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


@functools.cache
def torch_video():
    """The PyTorch modules of video_folder(), loaded back with diffusers/transformers (float32, eval)."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet3DConditionModel

    f = video_folder()
    return dict(unet=UNet3DConditionModel.from_pretrained(f, subfolder="unet").eval(),
                vae=AutoencoderKL.from_pretrained(f, subfolder="vae").eval(),
                scheduler=DDIMScheduler.from_pretrained(f, subfolder="scheduler"))


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


def _projection_classes():
    """The two diffusers conversions' camera projections (772 -> 768 Linear), tiny: Animate124's
    ProjectionModel (`cc_projection` attribute) and stable-dreamfusion's CLIPCameraProjection (`proj`)."""
    from diffusers import ConfigMixin, ModelMixin
    from diffusers.configuration_utils import register_to_config

    class ProjectionModel(ModelMixin, ConfigMixin):
        @register_to_config
        def __init__(self, in_channels, out_channels):
            super().__init__()
            self.cc_projection = torch.nn.Linear(in_channels, out_channels)

        def forward(self, x):
            return self.cc_projection(x)

    class CLIPCameraProjection(ModelMixin, ConfigMixin):
        @register_to_config
        def __init__(self, embedding_dim=HIDDEN, additional_embeddings=4):
            super().__init__()
            self.proj = torch.nn.Linear(embedding_dim + additional_embeddings, embedding_dim)

        def forward(self, x):
            return self.proj(x)

    return ProjectionModel, CLIPCameraProjection


ZERO123_IMAGE = 32  # tiny reference / render size (official 256): latents 4x4, CLIP image size 32


@functools.cache
def zero123_folder(layout="cc_projection"):
    """A tiny zero123 folder in a diffusers conversion layout: unet/ (8 input channels), vae/, image_encoder/
    (CLIPVisionModelWithProjection), feature_extractor/, scheduler/, and the camera projection folder."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    folder = os.path.join(root(), f"zero123-{layout}")
    _seed(1)
    randomize(UNet2DConditionModel(**dict(UNET1, in_channels=8, sample_size=4)), 11).save_pretrained(
        os.path.join(folder, "unet"))
    randomize(AutoencoderKL(**VAE), 12, scale=0.15).save_pretrained(os.path.join(folder, "vae"))
    enc = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=HIDDEN, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
        image_size=ZERO123_IMAGE, patch_size=8, projection_dim=HIDDEN))
    randomize(enc, 13).save_pretrained(os.path.join(folder, "image_encoder"))
    CLIPImageProcessor(size={"shortest_edge": ZERO123_IMAGE},
                       crop_size={"height": ZERO123_IMAGE, "width": ZERO123_IMAGE}).save_pretrained(
        os.path.join(folder, "feature_extractor"))
    scheduler().save_pretrained(os.path.join(folder, "scheduler"))
    projection_model, camera_projection = _projection_classes()
    proj = projection_model(HIDDEN + 4, HIDDEN) if layout == "cc_projection" else camera_projection(HIDDEN, 4)
    g = torch.Generator().manual_seed(14)
    with torch.no_grad():
        for p in proj.parameters():
            p.copy_(0.2 * torch.randn(p.shape, generator=g))
    if layout in ("cc_projection", "clip_camera_projection"):
        proj.save_pretrained(os.path.join(folder, layout))
    index = {"_class_name": "Zero1to3StableDiffusionPipeline", "_diffusers_version": "0.20.2",
             "feature_extractor": ["transformers", "CLIPImageProcessor"],
             "image_encoder": ["transformers", "CLIPVisionModelWithProjection"],
             "scheduler": ["diffusers", "DDIMScheduler"], "unet": ["diffusers", "UNet2DConditionModel"],
             "vae": ["diffusers", "AutoencoderKL"], layout: ["pipeline_zero1to3", type(proj).__name__]}
    with open(os.path.join(folder, "model_index.json"), "w") as f:
        json.dump(index, f)
    return folder


@functools.cache
def torch_zero123(layout="cc_projection"):
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    f = zero123_folder(layout)
    projection_model, camera_projection = _projection_classes()
    cls = projection_model if layout == "cc_projection" else camera_projection
    return dict(unet=UNet2DConditionModel.from_pretrained(f, subfolder="unet").eval(),
                vae=AutoencoderKL.from_pretrained(f, subfolder="vae").eval(),
                image_encoder=CLIPVisionModelWithProjection.from_pretrained(os.path.join(f, "image_encoder")).eval(),
                feature_extractor=CLIPImageProcessor.from_pretrained(os.path.join(f, "feature_extractor")),
                cc_projection=cls.from_pretrained(f, subfolder=layout).eval(),
                scheduler=DDIMScheduler.from_pretrained(f, subfolder="scheduler"))


@functools.cache
def controlnet_folder():
    """A tiny ControlNet (the UNET1 architecture + an 8x conditioning embedding) saved alone, like the
    control_v11f1e_sd15_tile folder (config.json + weights)."""
    from diffusers import ControlNetModel

    folder = os.path.join(root(), "controlnet-tile")
    _seed(2)
    cn = ControlNetModel(in_channels=4, block_out_channels=UNET1["block_out_channels"],
                         down_block_types=UNET1["down_block_types"], layers_per_block=1,
                         cross_attention_dim=HIDDEN, attention_head_dim=8, norm_num_groups=32,
                         conditioning_embedding_out_channels=(8, 8, 8, 8))
    randomize(cn, 21).save_pretrained(folder)
    return folder


@functools.cache
def torch_controlnet():
    from diffusers import ControlNetModel

    return ControlNetModel.from_pretrained(controlnet_folder()).eval()
