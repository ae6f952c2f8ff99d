"""3D cinemagraphy from a single image (cine_jax.pipeline.animate / `cine-jax animate`).

Defaults follow the official demo (xingyi-li/3d-cinemagraphy, configs/config.yaml and demo.py) where
they apply to this weight-free pipeline; see ../shared/reference/cinemagraphy.md for each fact.
Variants: "tiny" (tests), "paper" (the official settings this pipeline can take; see the README table),
none (the CLI default). Every key is read by the pipeline (tests/test_configs.py checks it).
"""

import ml_collections


def get_config(arg=None):
    c = ml_collections.ConfigDict()
    c.seed = 0  # handed to every registered component (depth estimator, inpainter, features, decoder)

    # --- input -------------------------------------------------------------------------------------
    c.io = ml_collections.ConfigDict()
    c.io.max_side = 768  # working size: longer side in pixels (official motion net: 768); 0 = input size
    c.io.multiple_of = 8  # working height and width are rounded to a multiple of this
    c.io.hint_frames = 50  # a labelme hint line of length L moves L/50 px per frame (official demo.py)

    # --- depth (cine_jax/depth.py) -----------------------------------------------------------------
    c.depth = ml_collections.ConfigDict()
    c.depth.estimator = "heuristic"  # a name in depth.ESTIMATORS; its factory gets this section + seed
    c.depth.near = 1.0  # estimated depth is normalised so the nearest pixel is this (official: 1 / disp)
    c.depth.heuristic = ml_collections.ConfigDict()  # HeuristicDepth.from_config
    c.depth.heuristic.far = 20.0  # farthest ground depth of the heuristic prior (units of `near`)
    c.depth.heuristic.sky_depth = 60.0  # depth given to detected sky
    c.depth.heuristic.horizon = 0.5  # ground-plane horizon as a fraction of the height (0 top .. 1 bottom)
    c.depth.heuristic.guided_radius = 8  # edge-aware smoothing window (pixels)
    c.depth.heuristic.guided_eps = 1e-3  # edge-aware smoothing regulariser (image in [0, 1])
    c.depth.heuristic.median_ksize = 5  # median filter of the disparity (official remove_noise_in_dpt_disparity)
    c.depth.heuristic.popup = True  # standing things take the depth of their ground contact (pop-up)
    c.depth.heuristic.texture_std = 0.03  # local grey std above which a pixel below the horizon is textured
    c.depth.heuristic.contact_rise = 0.05  # a standing thing must rise this fraction of H above the horizon
    c.depth.heuristic.contact_gap = 0.04  # smooth gaps (fraction of H) bridged inside a standing thing
    c.depth.heuristic.contact_smooth = 0.02  # running median of contact rows over this fraction of W

    # --- layering (cine_jax/layering.py) -----------------------------------------------------------
    c.layering = ml_collections.ConfigDict()
    c.layering.distance_threshold = 5.0  # Ward agglomerative clustering threshold (official)
    c.layering.subsample = 10  # disparity subsampling before clustering (official [::10, ::10])
    c.layering.max_layers = 4  # static capacity: bins beyond this are merged; 0 = no cap (official)
    c.layering.inpainter = "opencv"  # a name in layering.INPAINTERS; its factory gets this section + seed
    c.layering.inpaint_radius = 5  # cv2.inpaint radius of the "opencv" inpainter
    c.layering.context_erode = 10  # official: context = erode10x10(depth >= bin_i)
    c.layering.hole_margin = 40  # widest band inpainted behind an occluding contour (official: holes within
    #                              the context bbox grown by 40 px); the band is what the cameras and the
    #                              animation can reveal (pipeline.reveal_width), at most this
    c.layering.reveal_pad = 2.0  # px added to the revealed width (splat footprint, rounding)
    c.layering.min_layer_pixels = 10  # official: skip a layer whose eroded alpha has < 10 pixels
    c.layering.discontinuity_ksize = 11  # official refine_near_depth_discontinuity median window
    c.layering.edge_threshold = 0.04  # depth edge: neighbours whose disparities differ by more than this x
    #                                   the disparity range (3D Photo Inpainting argument.yml depth_threshold)

    # --- motion (cine_jax/motion.py) ---------------------------------------------------------------
    c.motion = ml_collections.ConfigDict()
    c.motion.hint_sigma = 0.0  # Gaussian sigma (px) for densifying hints; 0 = H / K (deterministic
    #                            middle of the official random range randint(H//(2K), H//(K/2)))
    c.motion.smooth_ksize = 15  # box blur of the masked flow (official compute_flow_and_inpaint)
    c.motion.flow_scale = 1.0  # official --flow_scale: divides the flow (>1 slows the fluid)

    # --- scene (cine_jax/scene.py) -----------------------------------------------------------------
    c.scene = ml_collections.ConfigDict()
    c.scene.features = "rgba"  # a name in scene.FEATURES: per-layer features [L, H, W, C], RGBA first
    c.scene.alpha_threshold = 0.5  # keep layer pixels with alpha > 0.5 (official)
    c.scene.diffuse_iters = 7  # flow extension behind occluders (official masked_diffuse, 7 x 15x15)
    c.scene.diffuse_ksize = 15
    c.scene.visible_erode = 5  # official mask_i = erode5x5(mask_layer_i): the extension's sources
    c.scene.order_eps = 1.05  # a point not behind the nearer layers is pushed to prev * 1.05 (official
    #                            1.01; 1.05 keeps it clearly behind under the soft z-test, depth_tau)
    c.scene.capacity_factor = 2.0  # maximum static point capacity = factor * H * W (overflow counted)

    # --- splatting, blending, decoding (kernels/splat.py, cine_jax/render.py) -----------------------
    c.render = ml_collections.ConfigDict()
    c.render.decoder = "identity"  # a name in render.DECODERS; its factory gets this section + seed
    c.render.fill_holes = True  # identity decoder: fill pixels no point reached (push-pull)
    c.render.fill_levels = 8  # push-pull pyramid levels (a hole up to 2^8 px wide is filled)
    c.render.fill_relax = 2  # membrane (Jacobi) smoothing steps per pyramid level of the fill
    c.render.point_radius = 1.5  # pixels (official point_radius 1.5)
    c.render.adaptive_radius = True  # official adaptive_pts_radius: radius * z_before / z_after
    c.render.max_radius = 1.5  # static footprint bound (px): adaptive radii are clipped to it. 1.5 keeps a
    #                            3x3 tap window (9 taps); 2.0 needs 21 taps and ~2.3x the splat time
    c.render.depth_tau = 0.01  # relative depth scale of the soft z-test: a surface 5% behind gets e^-5
    c.render.core_fraction = 0.5  # nearest depth per pixel taken over taps within 0.5 * radius
    c.render.splat_kernel = "bilinear"  # feature kernel: "bilinear" (sub-pixel exact resampling of a dense
    #                                     surface) or "gaussian" (splat_sigma); kernels/splat.py step 4
    c.render.splat_sigma = 0.25  # px; the "gaussian" kernel, and the tie-break term of "bilinear"
    c.render.slope_slack = 1.0  # surface-aware z-test: depth slack = this x point slope x (1 + core) x
    #                             radius (0 = plain soft z-test relative to the pixel's nearest point)
    c.render.use_feature_alpha = True  # Eq. 4 alpha = splat coverage x splatted layer alpha (RGBA A)
    c.render.near = 1e-3  # points closer than this (units of the nearest depth) to the camera are dropped
    c.render.blend_beta = 1.0  # Eq. 4: weight ~ exp(-beta * D), D = depth in units of the nearest depth
    c.render.chunk = 8  # frames rendered per jitted call (sharded over devices)
    c.render.point_block = 16384  # the splat loops over blocks of this many points so per-tap temporaries stay
    #                              in cache (768x768 frame on the 2-core CPU: ~0.83x the time of one block,
    #                              benchmarks/README.md); 0 = one block (all points), for a GPU / TPU
    c.render.crop = 0  # official crops 32 px from each border of the output; 0 keeps the full frame

    # --- camera trajectory (cine_jax/trajectories.py) ----------------------------------------------
    c.trajectory = ml_collections.ConfigDict()
    c.trajectory.name = "circle"
    c.trajectory.num_frames = 0  # 0 = the trajectory's official frame count
    c.trajectory.scale = 1.0  # multiplies the official magnitudes

    # --- learned networks (cine_jax/learned.py; weights from `cine-jax convert`) --------------------
    c.models = ml_collections.ConfigDict()
    c.models.dir = ""  # folder of converted weights (`cine-jax animate --weights DIR`); "" = weight-free
    # Per component: "auto" = the learned one when its converted files are in `dir`, otherwise the
    # weight-free one named in its section; or a registered name, which forces that component.
    c.models.depth = "auto"  # "dpt" (dpt.*) | "heuristic" | another name in depth.ESTIMATORS
    c.models.inpainter = "auto"  # "partialconv" (inpaint_depth.* + inpaint_color.*) | "opencv" | ...
    c.models.motion = "auto"  # "net" (motion.*) | "hints" (motion.MOTION_ESTIMATORS)
    c.models.features = "auto"  # "resunet" (feature_net.*) | "rgba" | ...
    c.models.decoder = "auto"  # "imgdecoder" (img_decoder.*; needs the feature net) | "identity" | ...
    c.models.dtype = "float32"  # network compute + param dtype; "bfloat16" is a GPU/TPU speed option
    c.models.decoder_blend = "official"  # "official": learned alpha on normalised disparity (official
    #                                      ImgDecoder.forward); "eq4": the paper's Eq. 4 on depth (blend_beta)
    c.models.motion_size = 768  # motion net input side (official motionH = motionW = 768; multiple of 256)
    c.models.motion_power_iteration = True  # official inference runs one spectral-norm power iteration
    c.models.dpt_net_size = 384  # DPT input: shorter side (official Resize(384, keep_aspect_ratio))
    c.models.dpt_median_ksize = 5  # median filter of the DPT disparity (official remove_noise_in_dpt_disparity)
    c.models.inpaint_sigma = 1.5  # Gaussian on the inpainted depth (official inpaint_depth: sigma 1.5)

    # --- output -------------------------------------------------------------------------------------
    c.output = ml_collections.ConfigDict()
    c.output.fps = 25.0  # official imageio.mimwrite fps
    c.output.gif_max_side = 384

    if arg == "tiny":
        c.io.max_side = 64
        c.models.motion_size = 256  # the smallest the motion net takes
        c.layering.subsample = 2
        c.render.chunk = 4
        c.output.gif_max_side = 64
    elif arg == "paper":
        # The official values this pipeline can take (README "--config paper" lists them and what differs).
        c.io.max_side = 0  # render at the input size (official demo.py --ds_factor 1.0)
        c.io.multiple_of = 1
        c.layering.max_layers = 0  # as many layers as Ward's threshold gives
        c.scene.order_eps = 1.01  # official layer ordering fix
        c.render.max_radius = 2.0  # the official adaptive radius is unclipped; 2 px covers the official
        #                            trajectories (zoom-in brings the nearest depth to 0.76: 1.5 / 0.76 < 2)
        c.render.crop = 32  # official: 32 px cropped from every border of the output
    elif arg not in (None, ""):
        raise ValueError(f"unknown cinemagraph config variant {arg!r}; use 'tiny', 'paper' or none")
    return c


# Ranges of the values above, checked before any compute (configs/validate.py; `cine-jax animate` and
# pipeline.animate). Every number, flag and tuple needs a rule here (tests/test_config_ranges.py checks it).
RANGES = {
    "seed": "int >= 0",
    "io.max_side": "int >= 0",  # 0 = the input size
    "io.multiple_of": "int >= 1",
    "io.hint_frames": "> 0",
    "depth.near": "> 0",
    "depth.heuristic.far": "> 0",
    "depth.heuristic.sky_depth": "> 0",
    "depth.heuristic.horizon": "[0, 1)",
    "depth.heuristic.guided_radius": "int >= 0",
    "depth.heuristic.guided_eps": "> 0",
    "depth.heuristic.median_ksize": "int >= 1",
    "depth.heuristic.popup": "bool",
    "depth.heuristic.texture_std": ">= 0",
    "depth.heuristic.contact_rise": "[0, 1)",
    "depth.heuristic.contact_gap": "[0, 1)",
    "depth.heuristic.contact_smooth": "[0, 1)",
    "layering.distance_threshold": "> 0",
    "layering.subsample": "int >= 1",
    "layering.max_layers": "int >= 0",  # 0 = no cap
    "layering.inpaint_radius": "int >= 1",
    "layering.context_erode": "int >= 0",
    "layering.hole_margin": "int >= 0",
    "layering.reveal_pad": ">= 0",
    "layering.min_layer_pixels": "int >= 0",
    "layering.discontinuity_ksize": "int >= 1",
    "layering.edge_threshold": "> 0",
    "motion.hint_sigma": ">= 0",
    "motion.smooth_ksize": "int >= 0",
    "motion.flow_scale": "> 0",
    "scene.alpha_threshold": "[0, 1)",
    "scene.diffuse_iters": "int >= 0",
    "scene.diffuse_ksize": "int >= 1",
    "scene.visible_erode": "int >= 1",
    "scene.order_eps": ">= 1",
    "scene.capacity_factor": "> 0",
    "render.fill_holes": "bool",
    "render.fill_levels": "int [1, 12]",
    "render.fill_relax": "int >= 0",
    "render.point_radius": "> 0",
    "render.adaptive_radius": "bool",
    "render.max_radius": "> 0",
    "render.depth_tau": "> 0",
    "render.core_fraction": "[0, 1]",
    "render.splat_kernel": "one of bilinear|gaussian",
    "render.splat_sigma": "> 0",
    "render.slope_slack": ">= 0",
    "render.use_feature_alpha": "bool",
    "render.near": ">= 0",
    "render.blend_beta": ">= 0",
    "render.chunk": "int >= 1",
    "render.point_block": "int >= 0",
    "render.crop": "int >= 0",
    "trajectory.num_frames": "int >= 0",
    "trajectory.scale": ">= 0",
    "models.dtype": "one of float32|bfloat16",
    "models.decoder_blend": "one of official|eq4",
    "models.motion_size": "int >= 256",  # and a multiple of 256 (checked by cine_jax.learned)
    "models.motion_power_iteration": "bool",
    "models.dpt_net_size": "int >= 32",
    "models.dpt_median_ksize": "int >= 1",  # odd (checked by DPTDepthEstimator)
    "models.inpaint_sigma": "> 0",
    "output.fps": "> 0",
    "output.gif_max_side": "int >= 16",
}
