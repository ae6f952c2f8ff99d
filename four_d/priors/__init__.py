"""The four diffusion priors of Animate124 and score distillation (see README "Diffusion priors").

sds (the shared SDS core, pure functions), sd (Stable Diffusion 1.5), zero123 (Zero-1-to-3 XL), video
(ModelScope text-to-video on the UNet3D port in unet3d), controlnet (ControlNet-Tile), textual_inversion
(learned_embeds files and the trainer), loading (local-folder loaders), common (shared pieces). Importing
this package imports neither torch nor diffusers; the loaders import diffusers / transformers when called.
"""
