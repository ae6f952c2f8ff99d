"""`four-d animate`: one image and two prompts -> a dynamic 4D field, its preview videos and the frames to score.

    res = animate("panda.png", "a panda", "a panda is dancing", "weights/", "out/", config, priors_config)

The chain (each piece lives in its own module; this one only wires them and owns the output layout):

1. four_d/preprocess.py: reference RGBA (mask file, the image's alpha, or GrabCut), depth (file or a
   cine_jax estimator), recentred on a square (official image_preprocess.py); written to OUT/reference/.
2. four_d/stage_priors.py: the --weights folder is checked for the folders the requested stages read
   (before any compute), then the diffusion priors are loaded into the stage contract.
3. four_d/stages.py: static -> coarse -> fine, OUT/<stage>/checkpoints (Orbax), OUT/<stage>/metrics.jsonl,
   the global step continued across stages; `resume` continues every stage from its last checkpoint.
4. Per finished stage, for people: four_d/previews.py videos (rgb, normal, depth, opacity) on the official test
   orbit at `cameras.num_test_frames` time steps and a contact sheet (OUT/<stage>/<stage>_*.mp4|gif,
   <stage>_sheet.png); and for `four-d eval`: the reference view rendered at the same time steps,
   OUT/<stage>/reference_view/000.png ... (what CLIP-I / CLIP-T / CLIP-R / CLIP-F score, four_d/evaluate.py).

The zero123 reference camera is the stages' one (stages.reference_polar / reference_azimuth, cameras.radius):
it is copied into the priors config, so the field's reference view and the novel-view prior's condition
cannot disagree.
"""

import json
import os

import numpy as np

REFERENCE_DIR = "reference"
REFERENCE_VIEW_DIR = "reference_view"


def parse_stages(text):
    """"static,coarse,fine" -> ("static", "coarse", "fine"), checked (ValueError naming --stages)."""
    from four_d.stages import STAGES

    names = tuple(s.strip() for s in str(text).split(",") if s.strip())
    if not names:
        raise ValueError("--stages: give at least one of static, coarse, fine")
    for n in names:
        if n not in STAGES:
            raise ValueError(f"--stages: unknown stage {n!r}; choose from {', '.join(STAGES)}")
    order = [STAGES.index(n) for n in names]
    if order != sorted(set(order)):
        raise ValueError(f"--stages: stages must be given once each, in the order {','.join(STAGES)}; got {text!r}")
    return names


def sync_reference_camera(config, priors_config):
    """The zero123 condition's camera = the stages' reference camera (module docstring)."""
    z = priors_config.zero123
    z.reference_polar = float(config.stages.reference_polar)
    z.reference_azimuth = float(config.stages.reference_azimuth)
    z.reference_radius = float(config.cameras.radius)
    return priors_config


def reference_pose(config):
    from four_d.cameras import pose_from_spherical

    return np.asarray(pose_from_spherical(float(config.stages.reference_polar), float(config.stages.reference_azimuth),
                                          float(config.cameras.radius)), np.float32)


def preview_renderer(config, stage, size, mesh=None):
    """render(params, pose, K, t) -> dict(rgb, normal_image, depth, opacity) of a stage's field for people:
    white background, headlight lambertian shading with ambient 0.5 (normals always computed), no jitter."""
    import jax.numpy as jnp

    from four_d import render as render_lib
    from four_d.stages import stage_model

    rc = config.render
    model = stage_model(config, stage)
    fn = render_lib.make_image_renderer(render_lib.make_field_apply(model), size, size, chunk=int(rc.chunk),
                                        mesh=mesh, num_samples=int(rc.num_samples), bound=rc.bound,
                                        min_near=rc.min_near, jitter=False, compute_normals=True,
                                        bg=jnp.ones(3, jnp.float32), shading="albedo", ambient=1.0)
    return lambda params, pose, K, t: fn(params, pose, K, t, None)


def write_reference_view(render, params, config, size, out_dir):
    """The reference view at num_test_frames time steps t = k / N as PNGs in out_dir (atomic). Returns paths."""
    import cv2

    from clitools.outputs import atomic_path
    from kernels.camera import intrinsics_from_fov

    n = int(config.cameras.num_test_frames)
    pose = reference_pose(config)
    K = np.asarray(intrinsics_from_fov(float(config.cameras.fovy), size, size), np.float32)
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for k in range(n):
        rgb = np.asarray(render(params, pose, K, k / n)["rgb"])
        img = (np.clip(rgb, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
        path = os.path.join(out_dir, f"{k:03d}.png")
        with atomic_path(path) as tmp:
            if not cv2.imwrite(tmp, cv2.cvtColor(img, cv2.COLOR_RGB2BGR)):
                raise OSError(f"{path}: cannot write")
        paths.append(path)
    return paths


def stage_outputs(config, stage, params, out_dir, size, mesh=None):
    """Previews and the reference-view frames of one finished stage; returns their paths."""
    from four_d.previews import stage_previews

    render = preview_renderer(config, stage, size, mesh=mesh)
    sdir = os.path.join(out_dir, stage)
    paths = stage_previews(render, params, sdir, config, stage, size=size)
    paths["reference_view"] = os.path.join(sdir, REFERENCE_VIEW_DIR)
    if _is_main():
        write_reference_view(render, params, config, size, paths["reference_view"])
    return paths


def _is_main():
    import jax

    return jax.process_index() == 0


def latest_reference_view(out_dir):
    """OUT/<last finished stage>/reference_view of an animate output folder, or None when OUT is not one."""
    from four_d.stages import STAGES

    summary = os.path.join(out_dir, "stages.json")
    if not os.path.isfile(summary):
        return None
    for st in reversed(STAGES):
        folder = os.path.join(out_dir, st, REFERENCE_VIEW_DIR)
        if os.path.isdir(folder) and any(n.endswith(".png") for n in os.listdir(folder)):
            return folder
    raise ValueError(f"{out_dir}: an animate output folder without reference-view frames "
                     f"(no {'|'.join(STAGES)}/{REFERENCE_VIEW_DIR}/); the run stopped before a stage finished")


def animate(image, prompt, motion_prompt, weights_dir, out_dir, config, priors_config, *, token_prompt=None,
            stages=("static", "coarse", "fine"), mask=None, depth=None, resume=False, stop=None, mesh=None,
            progress=True, preview_size=None, size=256, border_ratio=0.2, seed=0):
    """Run the chain (module docstring). Inputs are checked in the order: reference files, weights folder.
    The output folder must have been prepared by the caller (clitools.outputs.prepare_output_dir).

    Returns dict(stages -> {step, previews}, stopped (global step or None), reference paths)."""
    from four_d import preprocess, stage_priors, train_loop
    from four_d import stages as stages_lib

    stages = tuple(stages)
    stage_priors.check_weights_dir(weights_dir, stages, token_prompt)
    ref = preprocess.preprocess_reference(image, mask, depth, size=size, border_ratio=border_ratio, seed=seed)
    ref_paths = preprocess.write_reference(os.path.join(out_dir, REFERENCE_DIR), ref) if _is_main() else {}
    mesh = train_loop.make_mesh() if mesh is None else mesh
    priors_config = sync_reference_camera(config, priors_config)
    priors = stage_priors.load_stage_priors(weights_dir, prompt, motion_prompt, token_prompt, ref["rgba"],
                                            priors_config, stages, mesh, seed=seed)
    res = stages_lib.run_stages(ref["rgba"], ref["depth"], priors, out_dir, config, stages=stages, resume=resume,
                                stop=stop, mesh=mesh, progress=progress)
    bounds = stages_lib.stage_bounds(config)
    size_p = int(preview_size or config.stages.render_size)
    out = {"stopped": res["stopped"], "reference": ref_paths, "stages": {}}
    for st in stages:
        if st not in res:
            continue
        entry = {"step": res[st]["step"], "finished": res[st]["step"] == bounds[st][1]}
        if entry["finished"]:
            entry["previews"] = stage_outputs(config, st, res[st]["params"], out_dir, size_p, mesh)
        out["stages"][st] = entry
    if _is_main():
        from clitools.outputs import write_json

        write_json(os.path.join(out_dir, "animate.json"),
                   json.loads(json.dumps(out, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o))))
    return out
