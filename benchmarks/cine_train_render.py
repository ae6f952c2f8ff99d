"""Benchmark: the render stage (feature net + ImgDecoder) trained on procedural clips vs the identity decoder.

    python benchmarks/cine_train_render.py [--steps 30] [--size 40x32] [--clips 4] [--test-clips 2] [--batch 2]

Writes procedural train / test clips (`cine-jax make-data` generator: exact novel views at every time), trains
the render Stage (cine_jax/train/render.py, config "tiny" except steps / batch) with loop.run, then renders every
held-out clip's novel views at every time t with the two-frame training render and compares against the exact
views with the paper's metric (cine_jax.evaluate.frame_metrics: PSNR on the reprojection-mask crop):
  identity   RGBA point features + render.IdentityDecoder (no weights);
  trained    the exported feature_net + img_decoder (learned point features + ImgDecoder, learned blend).
Also reported: compile time and seconds per training step (the machine is shared: timings are indicative).
Writes benchmarks/results/cine_train_render.json.
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

from benchmarks.harness import Bench  # noqa: E402


def heldout_psnr(test_clips, render_fn):
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
    return float(np.mean(vals)), len(vals)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--size", default="40x32", help="WxH")
    ap.add_argument("--frames", type=int, default=3)
    ap.add_argument("--clips", type=int, default=4)
    ap.add_argument("--test-clips", type=int, default=2)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    w, h = map(int, args.size.split("x"))

    import jax

    from cine_jax import render as render_lib
    from cine_jax.train import loop, procedural, two_frame
    from cine_jax.train import render as render_stage
    from configs import cine_train, cinemagraph

    bench = Bench("cine_train_render")
    tmp = tempfile.mkdtemp(prefix="cine_train_render_")
    procedural.write_dataset(os.path.join(tmp, "train"), args.clips, size=(h, w), frames=args.frames, views=2, seed=1,
                             progress=False)
    procedural.write_dataset(os.path.join(tmp, "test"), args.test_clips, size=(h, w), frames=args.frames, views=2,
                             seed=2, progress=False)
    cfg = cine_train.get_config("tiny")
    cfg.loop.steps, cfg.loop.batch_size = args.steps, args.batch
    cfg.loop.sample_every, cfg.loop.checkpoint_every, cfg.loop.log_every = max(1, args.steps // 3), args.steps, 1
    stage = render_stage.make_stage(cfg)
    t0 = time.perf_counter()
    res = loop.run(stage, tmp, os.path.join(tmp, "out"), cfg, mesh=loop.make_mesh(1), progress=True)
    total = time.perf_counter() - t0
    rows = [json.loads(x) for x in open(os.path.join(tmp, "out", "metrics.jsonl"))]
    first_step_s = rows[0]["time"]
    per_step = (rows[-1]["time"] - rows[0]["time"]) / max(1, len(rows) - 1)

    test = render_stage.load_clips(tmp, cfg, "test")
    for c in test:  # the exact depth of the clip (for the reprojection mask)
        c["depth"] = np.load(os.path.join(c["path"], "depth.npy"))
    n = args.frames - 1
    opts = render_lib.render_options(cinemagraph.get_config())
    ident = render_lib.IdentityDecoder()
    f_id = jax.jit(lambda s, t, pose, K: two_frame.render_two_frame(s, t, n, pose, K, (h, w), opts, ident)["rgb"])
    psnr_id, count = heldout_psnr(test, f_id)

    from cine_jax import learned
    from cine_jax.nets.decoder import ImgDecoder
    from cine_jax.nets.features import ResUNet

    g = jax.device_get(res["state"]["g"])
    dec = learned.ImgDecoderRenderer(ImgDecoder(), None)
    feat_net = ResUNet()

    def trained(s, t, pose, K):
        feats = two_frame.learned_point_features(feat_net.apply, {"params": g["feature_net"]}, s)
        return two_frame.render_two_frame(s, t, n, pose, K, (h, w), opts, dec, features=feats,
                                          decoder_variables={"params": g["img_decoder"]})["rgb"]

    psnr_tr, _ = heldout_psnr(test, jax.jit(trained))
    bench.add("identity decoder (RGBA features)", heldout_psnr_db=round(psnr_id, 2), views=count)
    bench.add(f"trained feature net + decoder ({args.steps} steps)", heldout_psnr_db=round(psnr_tr, 2), views=count,
              final_train_loss=round(rows[-1]["loss"], 4), first_train_loss=round(rows[0]["loss"], 4))
    bench.meta.update(size=[w, h], frames=args.frames, train_clips=args.clips, test_clips=args.test_clips,
                      batch=args.batch, steps=args.steps, first_step_incl_compile_s=round(first_step_s, 1),
                      seconds_per_step=round(per_step, 2), total_train_s=round(total, 1),
                      trained_minus_identity_db=round(psnr_tr - psnr_id, 2), machine="shared 2-core CPU")
    print(f"held-out novel views: identity {psnr_id:.2f} dB, trained {psnr_tr:.2f} dB ({args.steps} steps)")
    bench.report(args.out)


if __name__ == "__main__":
    main()
