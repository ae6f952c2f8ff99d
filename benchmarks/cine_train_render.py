"""Render-stage training (cine_jax/train/render.py): held-out quality vs the identity decoder, speed, paper memory.

    python benchmarks/cine_train_render.py --part quality [--steps 150] [--eval-at 50,100] [--size 40x32]
        [--clips 4] [--test-clips 2] [--views 2] [--batch 2] [--lr 1e-4] [--lambda-gan 1] [--lambda-fm 10]
    python benchmarks/cine_train_render.py --part speed     # 256x256, batch 2
    python benchmarks/cine_train_render.py --part memory    # 768x768, batch 16, compile only

* quality -- writes procedural train / test clips (`cine-jax make-data` generator: exact novel views at every
  time), trains the render Stage (config "tiny" except the flags) with loop.run, and at every --eval-at step
  (the run is resumed from its checkpoint between them: the same steps as one run) renders every held-out
  clip's novel views at every time t with the two-frame training render, scored against the exact views with
  the paper's metric (cine_jax.evaluate.frame_metrics: PSNR on the reprojection-mask crop):
    identity   RGBA point features + render.IdentityDecoder (no weights);
    trained    the feature net + img_decoder of the state (learned point features + ImgDecoder, learned blend).
  Non-paper settings for a CPU-sized run are flags (--lr, --lambda-*), recorded in the JSON. Also writes a
  contact sheet (target | identity | trained | 4x |error| identity | 4x |error| trained, one row per held-out
  clip, view 0, t = 1) next to the JSON.
* speed -- the render step at 256x256 (one procedural clip, batch --speed-batch, paper discriminator, LPIPS
  --speed-lpips), compile time apart, median step time, peak RSS.
* memory -- the paper setting (768x768, batch 16, paper discriminator, LPIPS-VGG16): state bytes from
  jax.eval_shape (no weights allocated) and XLA's memory_analysis() of the compiled step (temporaries,
  arguments, outputs). Batch shapes come from a real 32x40 batch scaled to 768x768 (every array whose size
  follows H, W or the point count P = 2 L H W).
The machine is shared (2 cores, 3 engineers): timings are indicative.
"""

import argparse
import json
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

from benchmarks.harness import RESULTS_DIR, Bench, compile_time, peak_rss_gib, time_callable  # noqa: E402

GIB = 2**30


def heldout_psnr(test_clips, render_fn):
    """Mean PSNR and the per-(clip, view, t) values of render_fn(sample, t, pose, K) -> [H, W, 3]."""
    from cine_jax import evaluate

    vals = []
    for clip in test_clips:
        s = clip["sample"]
        for k in range(clip["views"].shape[0]):
            mask = evaluate.reprojection_mask(clip["depth"], clip["K"],
                                              clip["poses"][k], clip["K"], clip["views"].shape[2:4])
            for t in range(clip["views"].shape[1]):
                pred = np.asarray(render_fn(s, t, clip["poses"][k], clip["K"]))
                vals.append(evaluate.frame_metrics(pred, clip["views"][k, t], mask)["psnr"])
    return float(np.mean(vals)), vals


def _count(tree):
    import jax

    return int(sum(np.prod(a.shape) for a in jax.tree.leaves(tree)))


def _bytes(tree):
    import jax

    return int(sum(np.prod(a.shape) * np.dtype(a.dtype).itemsize for a in jax.tree.leaves(tree)))


def _renderers(h, w, n):
    """(identity(sample, t, pose, K), trained(g, sample, t, pose, K)) jitted two-frame renders."""
    import jax

    from cine_jax import learned
    from cine_jax import render as render_lib
    from cine_jax.nets.decoder import ImgDecoder
    from cine_jax.nets.features import ResUNet
    from cine_jax.train import two_frame
    from configs import cinemagraph

    opts = render_lib.render_options(cinemagraph.get_config())
    ident = render_lib.IdentityDecoder()
    f_id = jax.jit(lambda s, t, pose, K: two_frame.render_two_frame(s, t, n, pose, K, (h, w), opts, ident)["rgb"])
    dec = learned.ImgDecoderRenderer(ImgDecoder(), None)
    feat_net = ResUNet()

    @jax.jit
    def f_tr(g, s, t, pose, K):
        feats = two_frame.learned_point_features(feat_net.apply, {"params": g["feature_net"]}, s)
        return two_frame.render_two_frame(s, t, n, pose, K, (h, w), opts, dec, features=feats,
                                          decoder_variables={"params": g["img_decoder"]})["rgb"]

    return f_id, f_tr


def _sheet(test, f_id, f_tr, g, path):
    import cv2

    rows = []
    for clip in test:
        s, pose, K = clip["sample"], clip["poses"][0], clip["K"]
        t = min(1, clip["views"].shape[1] - 1)
        gt = clip["views"][0, t]
        a, b = np.asarray(f_id(s, t, pose, K)), np.asarray(f_tr(g, s, t, pose, K))
        ea, eb = np.clip(4 * np.abs(a - gt), 0, 1), np.clip(4 * np.abs(b - gt), 0, 1)
        rows.append(np.concatenate([gt, a, b, ea, eb], axis=1))
    img = (np.clip(np.concatenate(rows, axis=0), 0, 1) * 255 + 0.5).astype(np.uint8)
    img = cv2.resize(img, (img.shape[1] * 4, img.shape[0] * 4), interpolation=cv2.INTER_NEAREST)
    cv2.imwrite(path, img[..., ::-1])


def quality_rows(bench, args):
    import jax

    from cine_jax.train import loop, procedural
    from cine_jax.train import render as render_stage
    from configs import cine_train

    w, h = map(int, args.size.split("x"))
    tmp = args.work or tempfile.mkdtemp(prefix="cine_train_render_")
    for split, n, seed in (("train", args.clips, 1), ("test", args.test_clips, 2)):
        d = os.path.join(tmp, split)
        if not os.path.isdir(d):
            os.makedirs(d)
            procedural.write_dataset(d, n, size=(h, w), frames=args.frames, views=args.views, seed=seed,
                                     progress=False)
    cfg = cine_train.get_config("tiny")
    cfg.loop.batch_size = args.batch
    cfg.loop.sample_every, cfg.loop.log_every = args.sample_every, args.log_every
    cfg.render.lr = args.lr
    if args.lr_decay_steps:  # the config's StepLR (paper: x0.5 every 50k steps), here for a CPU-sized run
        cfg.render.lr_decay_steps, cfg.render.lr_decay = args.lr_decay_steps, args.lr_decay
    cfg.render.lambda_gan, cfg.render.lambda_fm = args.lambda_gan, args.lambda_fm
    cfg.render.lambda_l1, cfg.render.lambda_perceptual = args.lambda_l1, args.lambda_perceptual
    stage = render_stage.make_stage(cfg)

    test = render_stage.load_clips(tmp, cfg, "test")
    for c in test:  # the exact depth of the clip (for the reprojection mask)
        c["depth"] = np.load(os.path.join(c["path"], "depth.npy"))
    f_id, f_tr = _renderers(h, w, args.frames - 1)
    psnr_id, per_id = heldout_psnr(test, f_id)
    print(f"held-out novel views: identity {psnr_id:.2f} dB over {len(per_id)} views", flush=True)
    bench.add("identity decoder (RGBA features)", heldout_psnr_db=round(psnr_id, 2), views=len(per_id))

    targets = sorted({int(x) for x in args.eval_at.split(",") if x} | {args.steps})
    out_dir = os.path.join(tmp, "out")
    curve, res, wall0, cpu0 = [], None, time.perf_counter(), time.process_time()
    for i, target in enumerate(targets):
        cfg.loop.steps = target
        cfg.loop.checkpoint_every = target
        res = loop.run(stage, tmp, out_dir, cfg, mesh=loop.make_mesh(1), progress=True, resume=i > 0 or args.resume,
                       overwrite=i == 0 and not args.resume)
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        g = jax.device_get(res["state"]["g"])
        psnr_tr, per_tr = heldout_psnr(test, lambda s, t, pose, K, g=g: f_tr(g, s, t, pose, K))
        rows = [json.loads(x) for x in open(os.path.join(out_dir, "metrics.jsonl"))]
        last = rows[-max(1, min(len(rows), 20)):]  # train metrics averaged over the last logged rows
        point = dict(steps=target, wall_min=round(wall / 60, 1), cpu_min=round(cpu / 60, 1),
                     train_loss=round(float(np.mean([r["loss"] for r in last])), 4),
                     train_l1=round(float(np.mean([r["l1"] for r in last])), 4),
                     train_psnr_db=round(float(np.mean([r["psnr"] for r in last])), 2),
                     heldout_psnr_db=round(psnr_tr, 2), trained_minus_identity_db=round(psnr_tr - psnr_id, 2),
                     trained_better_views=f"{sum(a > b for a, b in zip(per_tr, per_id))} / {len(per_id)}")
        curve.append(point)
        print(json.dumps(point), flush=True)
        bench.add(f"trained feature net + decoder ({target} steps)", **point)
        _quality_meta(bench, args, cfg, out_dir, per_id, per_tr, tmp)
        if target != targets[-1]:  # the JSON and the sheet so far (a long run stopped early keeps its curve)
            bench.report(args.out)
            _sheet(test, f_id, f_tr, g, _sheet_path(args))
    _sheet(test, f_id, f_tr, jax.device_get(res["state"]["g"]), _sheet_path(args))
    print(f"wrote {_sheet_path(args)}")
    return curve


def _sheet_path(args):
    return os.path.splitext(args.out or os.path.join(RESULTS_DIR, "cine_train_render.json"))[0] + ".png"


def _quality_meta(bench, args, cfg, out_dir, per_id, per_tr, tmp):
    w, h = map(int, args.size.split("x"))
    first = json.loads(open(os.path.join(out_dir, "metrics.jsonl")).readline())
    bench.meta.update(size=[w, h], frames=args.frames, views=args.views, train_clips=args.clips,
                      test_clips=args.test_clips, batch=args.batch, lr=args.lr,
                      lr_decay_steps=int(cfg.render.lr_decay_steps),
                      lr_decay=float(cfg.render.lr_decay), lambda_gan=args.lambda_gan,
                      lambda_fm=args.lambda_fm, lambda_l1=args.lambda_l1, lambda_perceptual=args.lambda_perceptual,
                      perceptual_net=str(cfg.render.perceptual_net), first_train_loss=round(first["loss"], 4),
                      first_step_incl_compile_s=round(first["time"], 1), per_view_identity=per_id,
                      per_view_trained=per_tr, machine="shared 2-core CPU (3 engineers)", work=tmp)


def _batch_of(size, batch, lpips_net="alexnet"):
    """(config, one real host batch) of a procedural clip at size (H, W)."""
    from cine_jax.train import procedural
    from cine_jax.train import render as render_stage
    from configs import cine_train

    tmp = tempfile.mkdtemp(prefix="cine_train_render_speed_")
    procedural.write_dataset(tmp, 1, size=size, frames=3, views=1, seed=3, progress=False)
    cfg = cine_train.get_config("paper")
    cfg.loop.batch_size = batch
    cfg.render.perceptual_net = lpips_net
    return cfg, next(iter(render_stage.batches(tmp, cfg, "train", 0, 0)))


def speed_rows(bench, batch, repeats, lpips_net):
    import jax

    from cine_jax.train import render as render_stage

    cfg, b = _batch_of((256, 256), batch, lpips_net)
    stage = render_stage.make_stage(cfg)
    state = stage.init(jax.random.PRNGKey(0), b)
    key = jax.random.PRNGKey(1)
    step = jax.jit(stage.step)
    ctime, compiled = compile_time(step, state, b, key)
    hlo_lines = len(step.lower(state, b, key).as_text().splitlines())
    med, _ = time_callable(compiled, state, b, key, repeats=repeats)
    bench.add("render step 256x256 paper nets", batch=batch, lpips=lpips_net, compile_s=round(ctime, 1),
              step_s=round(med, 3), steps_per_s=round(1 / med, 3), samples_per_s=round(batch / med, 2),
              hlo_lines=hlo_lines, g_params=_count(state["g"]), d_params=_count(state["d"]),
              peak_rss_gib=round(peak_rss_gib(), 2))


def memory_rows(bench, size=768, batch=16):
    import jax

    from cine_jax.train import render as render_stage

    h0, w0, b0 = 32, 40, 2
    cfg, small = _batch_of((h0, w0), b0, "vgg16")
    cfg.loop.batch_size = batch
    L = small["ldi_rgba"].shape[2]
    scale = {h0: size, w0: size, 2 * L * h0 * w0: 2 * L * size * size}

    def big(a):
        shape = (batch,) + tuple(scale.get(d, d) for d in a.shape[1:])
        return jax.ShapeDtypeStruct(shape, a.dtype)

    b = {k: big(v) for k, v in small.items()}
    stage = render_stage.make_stage(cfg)
    key = jax.random.PRNGKey(0)
    state = jax.eval_shape(stage.init, key, b)
    t0 = time.perf_counter()
    compiled = jax.jit(stage.step).lower(state, b, key).compile()
    ctime = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    row = dict(batch=batch, lpips="vgg16", g_params=_count(state["g"]), d_params=_count(state["d"]),
               state_gib=round(_bytes(state) / GIB, 3), batch_gib=round(_bytes(b) / GIB, 3),
               compile_s=round(ctime, 1))
    if mem is not None:
        row.update(temp_gib=round(mem.temp_size_in_bytes / GIB, 2), args_gib=round(mem.argument_size_in_bytes / GIB, 3),
                   out_gib=round(mem.output_size_in_bytes / GIB, 3))
    bench.add(f"render step memory {size}x{size} paper nets", **row)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--part", action="append", choices=("quality", "speed", "memory"))
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--eval-at", default="", help="comma-separated steps at which to score the held-out views too")
    ap.add_argument("--size", default="40x32", help="WxH")
    ap.add_argument("--frames", type=int, default=3)
    ap.add_argument("--views", type=int, default=2)
    ap.add_argument("--clips", type=int, default=4)
    ap.add_argument("--test-clips", type=int, default=2)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--lr", type=float, default=1e-4, help="feature net + decoder lr (paper 1e-4)")
    ap.add_argument("--lr-decay-steps", type=int, default=0, help="StepLR period (0: the config's, paper 50k)")
    ap.add_argument("--lr-decay", type=float, default=0.5, help="StepLR factor (paper 0.5)")
    ap.add_argument("--lambda-gan", type=float, default=1.0)
    ap.add_argument("--lambda-fm", type=float, default=10.0)
    ap.add_argument("--lambda-l1", type=float, default=1.0)
    ap.add_argument("--lambda-perceptual", type=float, default=1.0)
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--sample-every", type=int, default=500)
    ap.add_argument("--work", default=None, help="folder for the data and the run (default: a temporary one)")
    ap.add_argument("--resume", action="store_true", help="continue the run in --work from its last checkpoint "
                    "(the same flags; wall / CPU minutes then count this invocation only)")
    ap.add_argument("--speed-batch", type=int, default=2)
    ap.add_argument("--speed-lpips", default="alexnet", choices=("alexnet", "vgg16"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    parts = args.part or ["quality"]
    name = "cine_train_render" if parts == ["quality"] else "cine_train_render_" + "_".join(parts)
    bench = Bench(name)
    if "speed" in parts:
        speed_rows(bench, args.speed_batch, args.repeats, args.speed_lpips)
    if "memory" in parts:
        memory_rows(bench)
    if "quality" in parts:
        quality_rows(bench, args)
    bench.report(args.out)


if __name__ == "__main__":
    import jax

    jax.config.update("jax_compilation_cache_dir", os.path.expanduser("~/.cache/cine-jax/bench-cache"))
    main()
