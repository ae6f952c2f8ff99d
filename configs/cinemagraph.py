"""3D cinemagraphy from a single image (cine_jax.pipeline.animate / `cine-jax animate`).

Defaults follow the official demo (xingyi-li/3d-cinemagraphy, configs/config.yaml and demo.py) where
they apply to this weight-free pipeline; see ../shared/reference/cinemagraphy.md for each fact.
"""

import ml_collections


def get_config(arg=None):
    c = ml_collections.ConfigDict()
    c.seed = 0

    # --- input -------------------------------------------------------------------------------------
    c.io = ml_collections.ConfigDict()
    c.io.max_side = 768  # working size: longer side in pixels (official works at 768x768)
    c.io.multiple_of = 8  # working height and width are rounded to a multiple of this
    c.io.hint_frames = 50  # a labelme hint line of length L moves L/50 px per frame (official demo.py)

    # --- depth (cine_jax/depth.py) -----------------------------------------------------------------
    c.depth = ml_collections.ConfigDict()
    c.depth.estimator = "heuristic"  # "heuristic" (no weights) or a learned estimator registered later
    c.depth.near = 1.0  # the nearest pixel gets depth 1 (official: depth = 1 / normalised disparity)
    c.depth.far = 20.0  # farthest finite depth of the heuristic prior
    c.depth.sky_depth = 60.0  # depth given to detected sky by the heuristic
    c.depth.horizon = 0.5  # ground-plane horizon as a fraction of the height (0 top .. 1 bottom)
    c.depth.guided_radius = 8  # edge-aware smoothing window (pixels) of the heuristic
    c.depth.guided_eps = 1e-3  # edge-aware smoothing regulariser (image in [0, 1])
    c.depth.median_ksize = 5  # median filter of the disparity (official remove_noise_in_dpt_disparity)

    # --- layering (cine_jax/layering.py) -----------------------------------------------------------
    c.layering = ml_collections.ConfigDict()
    c.layering.distance_threshold = 5.0  # Ward agglomerative clustering threshold (official)
    c.layering.subsample = 10  # disparity subsampling before clustering (official [::10, ::10])
    c.layering.max_layers = 4  # static capacity: bins beyond this are merged into the farthest
    c.layering.inpainter = "opencv"  # "opencv" (Telea) or a learned inpainter registered later
    c.layering.inpaint_radius = 5  # cv2.inpaint radius
    c.layering.context_erode = 10  # official: context = erode10x10(depth >= bin_i)
    c.layering.hole_margin = 40  # official: holes restricted to the context bbox grown by 40 px
    c.layering.min_layer_pixels = 10  # official: skip a layer whose eroded alpha has < 10 pixels
    c.layering.discontinuity_ksize = 11  # official refine_near_depth_discontinuity median window

    # --- motion (cine_jax/motion.py) ---------------------------------------------------------------
    c.motion = ml_collections.ConfigDict()
    c.motion.hint_sigma = 0.0  # Gaussian sigma (px) for densifying hints; 0 = H / K (deterministic
    #                            middle of the official random range randint(H//(2K), H//(K/2)))
    c.motion.smooth_ksize = 15  # box blur of the masked flow (official compute_flow_and_inpaint)
    c.motion.flow_scale = 1.0  # official --flow_scale: divides the flow (>1 slows the fluid)

    # --- scene (cine_jax/scene.py) -----------------------------------------------------------------
    c.scene = ml_collections.ConfigDict()
    c.scene.alpha_threshold = 0.5  # keep layer pixels with alpha > 0.5 (official)
    c.scene.diffuse_iters = 7  # flow/depth extension outside the visible pixels (official masked_diffuse)
    c.scene.diffuse_ksize = 15
    c.scene.visible_erode = 5  # official mask_i = erode5x5(mask_layer_i)
    c.scene.order_eps = 1.05  # a point not behind the nearer layers is pushed to prev * 1.05 (official
    #                            1.01; 1.05 keeps it clearly behind under the soft z-test, depth_tau)
    c.scene.capacity_factor = 2.0  # maximum static point capacity = factor * H * W (overflow counted)
    c.scene.features = "rgba"  # per-point features: "rgba" (default) or a learned feature net later

    # --- splatting and blending (kernels/splat.py, cine_jax/render.py) -----------------------------
    c.render = ml_collections.ConfigDict()
    c.render.point_radius = 1.5  # pixels (official point_radius 1.5)
    c.render.adaptive_radius = True  # official adaptive_pts_radius: radius * z_before / z_after
    c.render.max_radius = 1.5  # static footprint bound (px): adaptive radii are clipped to it. 1.5 keeps a
    #                            3x3 tap window (9 taps); 2.0 needs 21 taps and ~2.3x the splat time
    c.render.depth_tau = 0.01  # relative depth scale of the soft z-test: a surface 5% behind gets e^-5
    c.render.core_fraction = 0.5  # nearest depth per pixel taken over taps within 0.5 * radius
    c.render.splat_sigma = 0.25  # px; Gaussian feature kernel inside the radius (sharp: dense = exact)
    c.render.use_feature_alpha = True  # Eq. 4 alpha = splat coverage x splatted layer alpha (RGBA A)
    c.render.near = 1e-3  # points closer than this to the camera plane are dropped
    c.render.blend_beta = 1.0  # Eq. 4: weight ~ exp(-beta * D) with D the depth relative to the scene min
    c.render.decoder = "identity"  # "identity" (RGB from splatted RGBA) or a learned decoder later
    c.render.chunk = 8  # frames rendered per jitted call (sharded over devices)
    c.render.crop = 0  # official crops 32 px from each border of the output; 0 keeps the full frame

    # --- camera trajectory (cine_jax/trajectories.py) ----------------------------------------------
    c.trajectory = ml_collections.ConfigDict()
    c.trajectory.name = "circle"
    c.trajectory.num_frames = 0  # 0 = the trajectory's official frame count
    c.trajectory.scale = 1.0  # multiplies the official magnitudes

    # --- output -------------------------------------------------------------------------------------
    c.output = ml_collections.ConfigDict()
    c.output.fps = 25.0  # official imageio.mimwrite fps
    c.output.gif_max_side = 384

    if arg == "tiny":
        c.io.max_side = 64
        c.layering.subsample = 2
        c.render.chunk = 4
        c.output.gif_max_side = 64
    elif arg == "paper":
        c.render.crop = 32
    elif arg not in (None, ""):
        raise ValueError(f"unknown cinemagraph config variant {arg!r}; use 'tiny', 'paper' or none")
    return c


# Ranges of the values above, checked before any compute (configs/validate.py; `cine-jax animate` and
# pipeline.animate). Every number, flag and tuple needs a rule here (tests/test_configs.py checks it).
RANGES = {
    "seed": "int >= 0",
    "io.max_side": "int >= 16",
    "io.multiple_of": "int >= 1",
    "io.hint_frames": "> 0",
    "depth.near": "> 0",
    "depth.far": "> 0",
    "depth.sky_depth": "> 0",
    "depth.horizon": "[0, 1]",
    "depth.guided_radius": "int >= 0",
    "depth.guided_eps": "> 0",
    "depth.median_ksize": "int >= 1",
    "layering.distance_threshold": "> 0",
    "layering.subsample": "int >= 1",
    "layering.max_layers": "int >= 1",
    "layering.inpaint_radius": "int >= 1",
    "layering.context_erode": "int >= 0",
    "layering.hole_margin": "int >= 0",
    "layering.min_layer_pixels": "int >= 0",
    "layering.discontinuity_ksize": "int >= 1",
    "motion.hint_sigma": ">= 0",
    "motion.smooth_ksize": "int >= 1",
    "motion.flow_scale": "> 0",
    "scene.alpha_threshold": "[0, 1)",
    "scene.diffuse_iters": "int >= 0",
    "scene.diffuse_ksize": "int >= 1",
    "scene.visible_erode": "int >= 1",
    "scene.order_eps": ">= 1",
    "scene.capacity_factor": "> 0",
    "render.point_radius": "> 0",
    "render.adaptive_radius": "bool",
    "render.max_radius": "> 0",
    "render.depth_tau": "> 0",
    "render.core_fraction": "[0, 1]",
    "render.splat_sigma": "> 0",
    "render.use_feature_alpha": "bool",
    "render.near": ">= 0",
    "render.blend_beta": ">= 0",
    "render.chunk": "int >= 1",
    "render.crop": "int >= 0",
    "trajectory.num_frames": "int >= 0",
    "trajectory.scale": ">= 0",
    "output.fps": "> 0",
    "output.gif_max_side": "int >= 16",
}
