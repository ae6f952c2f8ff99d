"""Image(+text) to 4D (four_d/: grid4d, field, render, cameras, stages, fit; `four-d fit`).

Variants:
  get_config()         what `four-d fit` runs on a CPU (smaller grids, fewer samples, small images);
  get_config("paper")  the official Animate124 values (HeliosZhao/Animate124 `main`,
                       scripts/animate124/run-{static,dynamic,cn}.sh and main.py defaults);
  get_config("tiny")   the size every test uses (T=4, 4 levels, finest 64).
Facts and their sources are in ../shared/reference/animate124.md (section numbers in the comments).
Keys are read by four_d/render.py and four_d/fit.py (tests/test_fit.py checks that every key is read);
the `stages` section is read by four_d/stages.py.
"""

import ml_collections


def get_config(arg=None):
    c = ml_collections.ConfigDict()
    c.seed = 0

    # --- 4D grid (four_d/grid4d.py, kernels/grid.py GridSpec fields) ---------------------------------
    # Official: gridencoder tiledgrid, 16 levels x 2 features, base 16, desired 2048*bound, log2 16 (sec. 1).
    c.grid = ml_collections.ConfigDict()
    c.grid.num_levels = 16  # official --num_levels default (network_4dgrid.py GridEncoder)
    c.grid.features_per_level = 2  # official level_dim 2 -> 32-d feature
    c.grid.base_resolution = 16  # official base_resolution 16
    c.grid.finest_resolution = 512  # official 2048 * bound (paper variant); CPU default is coarser
    c.grid.log2_table_size = 14  # official log2_hashmap_size 16 (paper variant)
    c.grid.mode = "tiled"  # official gridtype 'tiled' (modulo-aliased capped table); or "dense"
    c.grid.max_dense_resolution = 128  # only used by mode="dense": caps the finest dense level
    c.grid.bound = 1.0  # official --bound 1
    c.grid.time_grid_size = 16  # official --time_grid_size 64 in run-dynamic.sh (paper variant)

    # --- field (four_d/field.py) -------------------------------------------------------------------
    c.field = ml_collections.ConfigDict()
    c.field.mlp_hidden = 64  # official sigma_net MLP(32 -> 64 -> 4), hidden_dim 64, num_layers 2
    c.field.blob_density = 10.0  # official --blob_density 10 (main.py default)
    c.field.blob_radius = 0.2  # official --blob_radius 0.2 (main.py default)
    c.field.density_activation = "exp"  # official --density_activation exp (trunc_exp); softplus/relu
    c.field.normal_eps = 1e-2  # official finite_difference_normal epsilon 1e-2
    c.field.grid_levels_mask = 8  # official --grid_levels_mask 8: last 8 levels zeroed early on (fit.level_mask_iters)

    # --- rendering (four_d/render.py) --------------------------------------------------------------
    c.render = ml_collections.ConfigDict()
    c.render.bound = 1.0  # official --bound 1: AABB [-1, 1]^3
    c.render.min_near = 0.2  # official --min_near 0.2
    c.render.num_samples = 128  # static samples per ray on CPU (official marches up to 1024 steps of 2 sqrt(3)/1024)
    c.render.jitter = True  # official: first training sample jittered by U(0, 1) * dt
    c.render.occupancy_resolution = 64  # official 128^3 occupancy grid, 1 cascade (paper variant)
    c.render.occupancy_time_bins = 16  # official --time_size 16 (dynamic stages), 1 in static
    c.render.occupancy_update_every = 16  # official update_extra_interval 16 steps
    c.render.occupancy_decay = 0.95  # official grid = max(0.95 * grid, new)
    c.render.density_threshold = 10.0  # official density_thresh 10: occupied if sigma > min(mean, 10)
    # Occupancy-guided sampling (four_d/render.py): coarse_samples occupancy lookups per ray place
    # occupancy_num_samples network samples over the occupied part of the ray (static shapes; the
    # official marcher takes dt = 2 sqrt(3)/1024 steps through occupied cells only).
    c.render.coarse_samples = 256  # not official (our two-pass scheme); 256 lookups ~ 1/128 of the diagonal
    c.render.occupancy_num_samples = 32  # num_samples / 4: benchmarks/four_d.py analytic error < dense S=32
    c.render.chunk = 4096  # rays per chunk of an image render (memory knob, not official)
    # Training renders (four_d.render.render_rays_chunked): train_chunk rays per chunk, each chunk under
    # jax.checkpoint when remat, so a step's memory is bounded by one chunk (benchmarks/four_d.py:
    # XLA memory analysis of a 16-frame 128x128 lambertian clip). Not official (PyTorch keeps all).
    # Off here: fit's 4096-ray batches fit in memory without it and a step is ~1.4x faster; on for the
    # paper sizes (16k-ray batches, 256 samples), where the kept activations would not fit.
    c.render.train_chunk = 4096
    c.render.remat = False

    # --- regularisers -----------------------------------------------------------------------------
    c.reg = ml_collections.ConfigDict()
    c.reg.lambda_time_tv = 0.1  # official --lambda_time_tv 0.1 (run-dynamic.sh)
    # official dnerf/network_4dgrid.py TV_loss works on the table rows (no points): mode "official";
    # "points" evaluates the encodings at tv_points uniform points instead (grid4d.temporal_tv_loss).
    c.reg.time_tv_mode = "official"
    c.reg.tv_points = 20_000

    # --- cameras (four_d/cameras.py) ---------------------------------------------------------------
    c.cameras = ml_collections.ConfigDict()
    c.cameras.radius = 1.8  # official --default_radius 1.8 (test orbit)
    c.cameras.fovy = 40.0  # official --default_fovy 40
    c.cameras.test_polar = 90.0  # official test orbit at --default_polar 90
    c.cameras.num_test_frames = 16  # official --num_test_frames 64 (paper variant): frames of the orbit video

    # --- optimiser -----------------------------------------------------------------------------------
    c.optim = ml_collections.ConfigDict()
    c.optim.lr_grid = 1e-2  # official lr 1e-3 * --lr_encoder_scale 10
    c.optim.lr_mlp = 1e-3  # official --lr 1e-3
    c.optim.b1 = 0.9  # official Adam betas (0.9, 0.99)
    c.optim.b2 = 0.99
    c.optim.eps = 1e-15  # official Adam eps 1e-15
    c.optim.grad_clip = 1.0  # official --grad_clip 1 -> clip_grad_value_ (dynamic stage only)

    # --- fit: reconstruction from images (four_d/fit.py, `four-d fit`) ------------------------------
    c.fit = ml_collections.ConfigDict()
    c.fit.iterations = 2000
    c.fit.batch_rays = 4096  # rays per step (sampled over views and frames)
    # Empty-space skipping in fit (render.occupancy_*): the grid lives in the train state and is
    # refreshed every render.occupancy_update_every steps (decay + max) from step occupancy_warmup on;
    # steps before it sample uniformly (render.num_samples), steps from it on use occupancy-guided
    # sampling (render.occupancy_num_samples). Official: first refresh at step 0 (warm-up 0). From the
    # untrained field that marks only the blob core occupied (sigma > min(mean, 10): radius ~0.34),
    # but occupancy grows with the content: on the tiny orbiting-spheres fit (spheres out to |x| 0.55,
    # 300 steps) held-out PSNR is 15.7 dB with warm-up 0, 14.8 / 14.9 dB with warm-up 50 / 100, and
    # 16.6 dB without skipping (2x the samples). So the official warm-up 0 is kept; raise
    # occupancy_warmup for scenes far outside the blob.
    c.fit.use_occupancy = True
    c.fit.occupancy_warmup = 0
    # Coarse-to-fine level masking in fit: the last field.grid_levels_mask levels are zeroed while
    # step <= level_mask_iters (official --grid_levels_mask_iters 3000 of 15000 static+dynamic steps =
    # 20%); 0 disables.
    c.fit.level_mask_iters = 400
    # Animate124 regularisers that apply to random ray batches (four_d.render.regularisers):
    # orientation (per-sample weights . normals, needs 6 extra field evaluations per sample) and weight
    # entropy. The official SDS-stage weights are --lambda_orient 1e-2 / --lambda_entropy 1e-3;
    # a photometric fit needs neither (they push towards hard surfaces seen from SDS views), so they
    # default to 0 here. The normal-image TV / blur terms need image-shaped batches: not used in fit.
    c.fit.lambda_orient = 0.0
    c.fit.lambda_entropy = 0.0
    # Shading of the training renders (field.SHADING_MODES): "albedo" fits images whose lighting is
    # baked in; "lambertian"/"textureless" are lit by the official per-step light normalize(rays_o + g),
    # g ~ N(0, I), with ambient ratio `ambient` (evaluation renders use a fixed headlight).
    c.fit.shading = "albedo"
    c.fit.ambient = 1.0
    c.fit.log_every = 50
    c.fit.eval_every = 500  # held-out PSNR/SSIM into metrics.jsonl every eval_every steps (0: only at the end)
    c.fit.checkpoint_every = 500
    c.fit.max_checkpoints = 3


    # --- stages: Animate124 static -> coarse -> fine (four_d/stages.py; animate124.md sections 3-5) -----
    # The global step continues across stages (official global_step): static runs steps [0, S),
    # coarse [S, S + C), fine [S + C, S + C + F). Each loss weight multiplies the prior's loss as returned
    # by its fn (the priors' own lambda_guidance must then be 1; zero123's angle / 180 stays in the prior).
    c.stages = ml_collections.ConfigDict()
    c.stages.render_size = 64  # SDS renders are H = W (official --h/--w 128; paper variant)
    c.stages.batch = 1  # cameras (static) / clips (coarse, fine) per step (official batch 1)
    c.stages.polar_range = (45.0, 135.0)  # official --theta_range 45 135 (nerf/provider.py rand_poses)
    c.stages.azimuth_range = (-180.0, 180.0)  # official --phi_range -180 180
    c.stages.uniform_sphere_rate = 0.5  # official --uniform_sphere_rate 0.5 (upper hemisphere)
    c.stages.reference_polar = 90.0  # official --default_polar 90 (the reference view)
    c.stages.reference_azimuth = 0.0  # official --default_azimuth 0
    # reference-view losses (official known_view_*; train_step of nerf/utils.py, dnerf/utils.py)
    c.stages.known_iters = 100  # official known_iters 100: every step before global step 100 is a reference step
    c.stages.known_view_interval = 4  # official known_view_interval 4 (zero123 on): every 4th global step
    c.stages.known_view_scale = 1.5  # official known_view_scale 1.5: the reference view at 1.5x render_size
    c.stages.known_view_noise = 1e-3  # official known_view_noise_scale 1e-3: N(0, s) on ray origins/directions
    c.stages.lambda_rgb = 5.0  # official --lambda_rgb 5 (MSE of rgb * mask)
    c.stages.lambda_mask = 0.5  # official --lambda_mask 0.5 (MSE of opacity vs mask)
    c.stages.lambda_depth = 0.01  # official --lambda_depth 0.01 ((1 - Pearson) / 2 inside the mask)
    # regularisers of SDS renders (official main.py defaults, animate124.md section 2)
    c.stages.lambda_orient = 1e-2  # official --lambda_orient 1e-2
    c.stages.lambda_entropy = 1e-3  # official --lambda_entropy 1e-3 (ramped by min(1, 2 step / iters))
    c.stages.lambda_normal_tv = 0.5  # official --lambda_2d_normal_smooth TV part 0.5
    c.stages.lambda_normal_smooth = 0.5  # official normal vs Gaussian blur (kernel 9) 0.5
    # albedo_only: every SDS render unlit (albedo), no normal phase / lambertian / textureless. Not
    # official: for known-answer runs against an unlit (flat) analytic target (benchmarks/stages_oracle.py).
    c.stages.albedo_only = False
    c.stages.ambient_range = (0.1, 1.0)  # official ambient_ratio ~ U(min_ambient_ratio 0.1, 1)
    # coarse-to-fine level mask: the last field.grid_levels_mask levels off while global step <= this
    c.stages.level_mask_iters = 3000  # official --grid_levels_mask_iters 3000
    c.stages.use_occupancy = False  # occupancy-guided sampling in the stages (official cuda_ray: on; paper variant)
    c.stages.log_every = 50
    c.stages.checkpoint_every = 500
    c.stages.max_checkpoints = 2

    c.stages.static = ml_collections.ConfigDict()
    c.stages.static.iterations = 5000  # official run-static.sh --iters 5000
    c.stages.static.lambda_sd = 1.0  # official --lambda_guidance 1.0 (SD)
    c.stages.static.lambda_zero123 = 40.0  # official --lambda_guidance ... 40 (zero123; x angle / 180 in the prior)
    c.stages.static.normal_iter_ratio = 0.2  # official --normal_iter_ratio 0.2: 'normal' shading first 20%
    c.stages.static.textureless_rate = 0.2  # official --textureless_rate 0.2 after the normal phase
    c.stages.static.grad_clip = 0.0  # official: no clipping in the static stage

    c.stages.coarse = ml_collections.ConfigDict()
    c.stages.coarse.iterations = 10_000  # official run-dynamic.sh --iters 15000 minus the 5000 static steps
    c.stages.coarse.num_frames = 16  # official --num_frames 16
    c.stages.coarse.precision = 256  # official --precision 256 (temporal balanced sampling)
    c.stages.coarse.zero_rate = 0.2  # official --zero_rate 0.2
    c.stages.coarse.mirror_rate = 0.5  # official mirror probability 0.5
    c.stages.coarse.dynamic_cam_rate = 0.9  # official --dynamic_cam_rate 0.9
    c.stages.coarse.delta_polar = 45.0  # official rand_poses_trajectory: d polar ~ U[-45, 45]
    c.stages.coarse.delta_azimuth = 90.0  # official: d azimuth ~ U[-90, 90]
    c.stages.coarse.lambda_video = 1.0  # official --lambda_guidance 1.0 (video slot)
    c.stages.coarse.lambda_zero123 = 40.0  # official 40, frame 0 of clips from t = 0, not mirrored
    c.stages.coarse.textureless_rate = 0.2  # official --textureless_rate default 0.2; no normal phase
    c.stages.coarse.grad_clip = 1.0  # official --grad_clip 1 (clip_grad_value_)
    # temporal TV weight: reg.lambda_time_tv (official --lambda_time_tv 0.1)

    c.stages.fine = ml_collections.ConfigDict()
    c.stages.fine.iterations = 5000  # official run-cn.sh --iters 20000 minus 15000
    c.stages.fine.cn_frames = 2  # official --cn_frames 2, chosen evenly from the clip
    c.stages.fine.lambda_controlnet = 1.0  # official --lambda_guidance ... 1.0 (CN; unused by --grad_dyn)
    c.stages.fine.lambda_video = 1.0  # the coarse terms continue
    c.stages.fine.lambda_zero123 = 40.0
    c.stages.fine.textureless_rate = 0.0  # official run-cn.sh --textureless_rate 0
    c.stages.fine.grad_clip = 1.0  # official --grad_clip 1 continues

    if arg == "tiny":
        c.grid.num_levels = 4
        c.grid.base_resolution = 8
        c.grid.finest_resolution = 64
        c.grid.log2_table_size = 12
        c.grid.max_dense_resolution = 32
        c.grid.time_grid_size = 4
        c.field.mlp_hidden = 16
        c.field.grid_levels_mask = 2
        c.render.num_samples = 16
        c.render.occupancy_resolution = 16
        c.render.occupancy_time_bins = 4
        c.render.occupancy_update_every = 4
        c.render.coarse_samples = 64
        c.render.occupancy_num_samples = 8
        c.render.chunk = 256
        c.render.train_chunk = 64
        c.render.remat = True  # tests exercise the checkpointed path
        c.reg.tv_points = 256
        c.cameras.num_test_frames = 4
        c.fit.iterations = 4
        c.fit.batch_rays = 64
        c.fit.log_every = 2
        c.fit.eval_every = 0  # held-out evaluation only at the end (tests that need a curve set it)
        c.fit.checkpoint_every = 2
        c.fit.max_checkpoints = 1
        c.fit.use_occupancy = False  # tests switch it on where they need it (keeps the rest fast)
        c.fit.level_mask_iters = 10
        c.stages.render_size = 16
        c.stages.known_iters = 2
        c.stages.level_mask_iters = 3
        c.stages.log_every = 1
        c.stages.checkpoint_every = 2
        c.stages.max_checkpoints = 1
        c.stages.static.iterations = 5
        c.stages.coarse.iterations = 4
        c.stages.coarse.num_frames = 4
        c.stages.coarse.precision = 16
        c.stages.fine.iterations = 3
    elif arg == "paper":
        c.grid.finest_resolution = 2048  # desired_resolution 2048 * bound
        c.grid.log2_table_size = 16  # log2_hashmap_size 16
        c.grid.time_grid_size = 64  # run-dynamic.sh --time_grid_size 64
        c.render.num_samples = 1024  # max_steps 1024 (official marches with an occupancy grid)
        c.render.occupancy_resolution = 128  # official grid_size 128
        c.render.occupancy_num_samples = 256  # num_samples / 4 over the occupied part of each ray
        c.render.remat = True  # 16k rays x 256 samples: activations only fit chunk by chunk
        # Memory setting, not in the official code: 1024 rays per rematerialised chunk brings the fine step from
        # 40.9 to 26.7 GB (benchmarks/stages_memory.py). The renders are the same: a ray's jitter is drawn from
        # fold_in(step key, its index in the batch), whatever the chunk (tests/test_render4d.py).
        c.render.train_chunk = 1024
        c.reg.tv_points = 100_000  # only for time_tv_mode="points"
        c.cameras.num_test_frames = 64  # --num_test_frames 64
        c.fit.iterations = 10_000  # run-dynamic.sh: --iters 15000 minus the 5000 static steps
        c.fit.batch_rays = 16_384
        c.fit.level_mask_iters = 2000
        c.stages.render_size = 128  # official --h/--w 128
        c.stages.use_occupancy = True  # official -O cuda_ray
    elif arg not in (None, ""):
        raise ValueError(f"configs/four_d.py: unknown variant {arg!r}; use 'tiny', 'paper' or none")
    return c


# Ranges of the values above, checked before any compute (configs/validate.py; `four-d fit` and fit.fit).
# Every number, flag and choice needs a rule here (tests/test_config_ranges.py checks it).
RANGES = {
    "seed": "int >= 0",
    "grid.num_levels": "int >= 1",
    "grid.features_per_level": "int >= 1",
    "grid.base_resolution": "int >= 2",
    "grid.finest_resolution": "int >= 2",
    "grid.log2_table_size": "int [1, 30]",
    "grid.mode": "one of tiled|dense",
    "grid.max_dense_resolution": "int >= 2",
    "grid.bound": "> 0",
    "grid.time_grid_size": "int >= 1",
    "field.mlp_hidden": "int >= 1",
    "field.blob_density": ">= 0",
    "field.blob_radius": "> 0",
    "field.density_activation": "one of exp|softplus|relu",
    "field.normal_eps": "> 0",
    "field.grid_levels_mask": "int >= 0",
    "render.bound": "> 0",
    "render.min_near": ">= 0",
    "render.num_samples": "int >= 1",
    "render.jitter": "bool",
    "render.occupancy_resolution": "int >= 1",
    "render.occupancy_time_bins": "int >= 1",
    "render.occupancy_update_every": "int >= 1",
    "render.occupancy_decay": "[0, 1]",
    "render.density_threshold": ">= 0",
    "render.coarse_samples": "int >= 1",
    "render.occupancy_num_samples": "int >= 1",
    "render.chunk": "int >= 1",
    "render.train_chunk": "int >= 1",
    "render.remat": "bool",
    "reg.lambda_time_tv": ">= 0",
    "reg.time_tv_mode": "one of official|points",
    "reg.tv_points": "int >= 1",
    "cameras.radius": "> 0",
    "cameras.fovy": "(0, 180)",
    "cameras.test_polar": "[0, 180]",
    "cameras.num_test_frames": "int >= 1",
    "optim.lr_grid": "> 0",
    "optim.lr_mlp": "> 0",
    "optim.b1": "[0, 1)",
    "optim.b2": "[0, 1)",
    "optim.eps": ">= 0",
    "optim.grad_clip": ">= 0",  # 0 disables
    "fit.iterations": "int >= 1",
    "fit.batch_rays": "int >= 1",
    "fit.use_occupancy": "bool",
    "fit.occupancy_warmup": "int >= 0",
    "fit.level_mask_iters": "int >= 0",
    "fit.lambda_orient": ">= 0",
    "fit.lambda_entropy": ">= 0",
    "fit.shading": "one of albedo|lambertian|textureless|normal",
    "fit.ambient": "[0, 1]",
    "fit.log_every": "int >= 1",
    "fit.eval_every": "int >= 0",
    "fit.checkpoint_every": "int >= 1",
    "fit.max_checkpoints": "int >= 1",
    "stages.render_size": "int >= 2",
    "stages.batch": "int >= 1",
    "stages.polar_range": "each [0, 180]",
    "stages.azimuth_range": "each [-360, 360]",
    "stages.uniform_sphere_rate": "[0, 1]",
    "stages.reference_polar": "[0, 180]",
    "stages.reference_azimuth": "[-360, 360]",
    "stages.known_iters": "int >= 0",
    "stages.known_view_interval": "int >= 0",  # 0: no periodic reference steps
    "stages.known_view_scale": "> 0",
    "stages.known_view_noise": ">= 0",
    "stages.lambda_rgb": ">= 0",
    "stages.lambda_mask": ">= 0",
    "stages.lambda_depth": ">= 0",
    "stages.lambda_orient": ">= 0",
    "stages.lambda_entropy": ">= 0",
    "stages.lambda_normal_tv": ">= 0",
    "stages.lambda_normal_smooth": ">= 0",
    "stages.ambient_range": "each [0, 1]",
    "stages.albedo_only": "bool",
    "stages.level_mask_iters": "int >= 0",
    "stages.use_occupancy": "bool",
    "stages.log_every": "int >= 1",
    "stages.checkpoint_every": "int >= 1",
    "stages.max_checkpoints": "int >= 1",
    "stages.static.iterations": "int >= 0",
    "stages.static.lambda_sd": ">= 0",
    "stages.static.lambda_zero123": ">= 0",
    "stages.static.normal_iter_ratio": "[0, 1]",
    "stages.static.textureless_rate": "[0, 1]",
    "stages.static.grad_clip": ">= 0",
    "stages.coarse.iterations": "int >= 0",
    "stages.coarse.num_frames": "int >= 1",
    "stages.coarse.precision": "int >= 1",
    "stages.coarse.zero_rate": "[0, 1]",
    "stages.coarse.mirror_rate": "[0, 1]",
    "stages.coarse.dynamic_cam_rate": "[0, 1]",
    "stages.coarse.delta_polar": "[0, 180]",
    "stages.coarse.delta_azimuth": "[0, 360]",
    "stages.coarse.lambda_video": ">= 0",
    "stages.coarse.lambda_zero123": ">= 0",
    "stages.coarse.textureless_rate": "[0, 1]",
    "stages.coarse.grad_clip": ">= 0",
    "stages.fine.iterations": "int >= 0",
    "stages.fine.cn_frames": "int >= 1",
    "stages.fine.lambda_controlnet": ">= 0",
    "stages.fine.lambda_video": ">= 0",
    "stages.fine.lambda_zero123": ">= 0",
    "stages.fine.textureless_rate": "[0, 1]",
    "stages.fine.grad_clip": ">= 0",
}
