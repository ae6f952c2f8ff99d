"""Motion-stage training (cine_jax/train/motion.py): speed, paper-scale memory, held-out EPE vs the baseline.

Parts (`python benchmarks/cine_train.py --part speed|memory|epe`; all by default):

* speed  -- steps/s of the jitted motion step (G + D forward/backward, both Adam updates) at 256x256 on this
            machine, tiny widths (nf 4, SPADE 8, ndf 8 / 3 layers) and paper widths (nf 32, SPADE 128, ndf 64 /
            4 layers), batch --speed-batch; compile time apart; random weights and inputs.
* memory -- the paper setting (768x768, batch 16, paper widths): parameter/optimiser bytes from jax.eval_shape
            (no weights allocated) and XLA's memory_analysis() of the compiled step (temporaries, arguments,
            outputs). Compiles only, never runs it.
* epe    -- held-out EPE (px/frame over the moving pixels, at the clip's size) of a short training run against
            the weight-free hint densification (cine_jax.motion.flow_from_annotations) given the same hints
            (motion.evaluate_epe). Trains with `cine-jax train motion` unless --run-dir already holds weights.

Writes benchmarks/results/cine_train.json (or cine_train_<parts>.json for a subset). The machine is shared
with other jobs: timings are indicative.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from benchmarks.harness import Bench, compile_time, peak_rss_gib, time_callable  # noqa: E402
from configs.cine_train import get_config  # noqa: E402

GIB = 2**30


def _paper_widths(cfg):
    cfg.motion.num_filters, cfg.motion.spade_hidden = 32, 128
    cfg.disc.ndf, cfg.disc.n_layers = 64, 4
    return cfg


def _random_batch(size, batch, rng):
    x = rng.uniform(-1, 1, (batch, size, size, 6)).astype(np.float32)
    x[..., 3] = (x[..., 3] > 0).astype(np.float32)
    return {"inputs": x, "flow": rng.normal(size=(batch, size, size, 2)).astype(np.float32)}


def speed_rows(bench, batch, repeats):
    from cine_jax.train import motion

    rng = np.random.default_rng(0)
    for label in ("tiny", "paper"):
        cfg = get_config("tiny")
        if label == "paper":
            _paper_widths(cfg)
        cfg.motion.size = 256
        stage = motion.make_stage(cfg)
        b = _random_batch(256, batch, rng)
        state = stage.init(jax.random.PRNGKey(0), b)
        key = jax.random.PRNGKey(1)
        ctime, compiled = compile_time(jax.jit(stage.step), state, b, key)
        med, _ = time_callable(compiled, state, b, key, repeats=repeats)
        bench.add(f"motion step 256x256 {label} widths", batch=batch, compile_s=round(ctime, 1),
                  step_s=round(med, 3), steps_per_s=round(1 / med, 3), samples_per_s=round(batch / med, 2),
                  g_params=_count(state["g"]), d_params=_count(state["d"]), peak_rss_gib=round(peak_rss_gib(), 2))


def _count(tree):
    return int(sum(np.prod(a.shape) for a in jax.tree.leaves(tree)))


def _bytes(tree):
    return int(sum(np.prod(a.shape) * np.dtype(a.dtype).itemsize for a in jax.tree.leaves(tree)))


def memory_rows(bench, size=768, batch=16):
    from cine_jax.train import motion

    cfg = _paper_widths(get_config("paper"))
    cfg.motion.size, cfg.loop.batch_size = size, batch
    stage = motion.make_stage(cfg)
    gen, disc = motion.networks(cfg)
    key = jax.random.PRNGKey(0)
    x = jax.ShapeDtypeStruct((batch, size, size, 6), jnp.float32)
    f = jax.ShapeDtypeStruct((batch, size, size, 2), jnp.float32)
    gv = jax.eval_shape(gen.init, key, jax.ShapeDtypeStruct((1, size, size, 6), jnp.float32))
    dv = jax.eval_shape(disc.init, key, jax.ShapeDtypeStruct((1, size, size, 8), jnp.float32))
    tx = optax.adam(1e-3)
    state = {"g": gv["params"], "g_spectral": gv["spectral"], "d": dv["params"], "d_spectral": dv["spectral"],
             "opt_g": jax.eval_shape(tx.init, gv["params"]), "opt_d": jax.eval_shape(tx.init, dv["params"])}
    t0 = time.perf_counter()
    compiled = jax.jit(stage.step).lower(state, {"inputs": x, "flow": f}, key).compile()
    ctime = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    row = dict(batch=batch, g_params=_count(gv["params"]), d_params=_count(dv["params"]),
               state_gib=round(_bytes(state) / GIB, 3), compile_s=round(ctime, 1))
    if mem is not None:
        row.update(temp_gib=round(mem.temp_size_in_bytes / GIB, 2), args_gib=round(mem.argument_size_in_bytes / GIB, 3),
                   out_gib=round(mem.output_size_in_bytes / GIB, 3))
    bench.add(f"motion step memory {size}x{size} paper widths", **row)


def epe_rows(bench, run_dir, data_dir, steps, samples_per_clip):
    from cine_jax import cli
    from cine_jax.train import motion, procedural

    if not os.path.isdir(os.path.join(data_dir, "train")):
        for split, n, seed in (("train", 16, 0), ("test", 6, 100)):
            os.makedirs(os.path.join(data_dir, split), exist_ok=True)
            procedural.write_dataset(os.path.join(data_dir, split), n, size=(96, 128), frames=4, views=1, seed=seed)
    weights = os.path.join(run_dir, "weights")
    if not os.path.isfile(os.path.join(weights, "motion.json")):
        argv = ["train", "motion", data_dir, "--out", run_dir, "--config", "tiny", "--steps", str(steps),
                "--config.loop.batch_size=4", "--config.loop.log_every=5", "--config.loop.sample_every=50",
                "--config.loop.checkpoint_every=50", "--config.motion.num_filters=8",
                "--config.motion.spade_hidden=16", "--config.disc.ndf=16", "--overwrite"]
        code = cli.main(argv)
        if code:
            raise SystemExit(f"training failed (exit {code})")
    cfg = get_config("tiny")
    import json

    run_cfg = json.load(open(os.path.join(run_dir, "config.json")))
    done = int(json.load(open(os.path.join(run_dir, "results.json")))["steps"])
    res = motion.evaluate_epe(weights, data_dir, cfg, "test", seed=0, samples_per_clip=samples_per_clip,
                              motion_size=int(run_cfg["motion"]["size"]))
    bench.add("held-out EPE, trained motion net", steps=done, epe=round(res["net"], 4), samples=res["num_samples"],
              net_width=run_cfg["motion"]["num_filters"], size=run_cfg["motion"]["size"])
    bench.add("held-out EPE, hint densification", epe=round(res["baseline"], 4), samples=res["num_samples"])
    wins = sum(a < b for a, b in zip(res["per_sample_net"], res["per_sample_baseline"]))
    bench.add("net better on", samples=f"{wins} / {res['num_samples']}",
              margin=round(res["baseline"] - res["net"], 4))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", action="append", choices=("speed", "memory", "epe"))
    ap.add_argument("--speed-batch", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--run-dir", default="/tmp/cine_train_bench/run")
    ap.add_argument("--data-dir", default="/tmp/cine_train_bench/data")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--samples-per-clip", type=int, default=4)
    args = ap.parse_args()
    parts = args.part or ["speed", "memory", "epe"]
    bench = Bench("cine_train" if not args.part else "cine_train_" + "_".join(parts))
    if "speed" in parts:
        speed_rows(bench, args.speed_batch, args.repeats)
    if "memory" in parts:
        memory_rows(bench)
    if "epe" in parts:
        epe_rows(bench, args.run_dir, args.data_dir, args.steps, args.samples_per_clip)
    bench.report()


if __name__ == "__main__":
    main()
