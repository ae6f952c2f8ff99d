"""cine_jax/train/motion.py + the `cine-jax train` CLI: data, a tiny training run, resume, sharding, export.

One tiny motion net (4 filters, 256x256, discriminator ndf 8 / 3 layers) trains on three procedural clips;
the 1-device run is compiled once and shared (module fixtures). Costs about two step compilations
(1 and 4 devices) plus ~25 steps.
"""

import json
import os

import cv2
import jax
import numpy as np
import pytest

from cine_jax import cli
from cine_jax.train import loop, procedural
from configs.cine_train import get_config

STEPS = 10


def _cfg(steps=STEPS, **loop_kw):
    c = get_config("tiny")
    c.loop.steps = steps
    c.loop.checkpoint_every = 1000
    c.loop.sample_every = 10  # one sample (one extra compile of the generator)
    for k, v in loop_kw.items():
        c.loop[k] = v
    return c


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("motion_data")
    for split, n, seed in (("train", 3, 0), ("test", 1, 1)):
        os.makedirs(root / split)
        procedural.write_dataset(str(root / split), n, size=(48, 64), frames=2, views=1, seed=seed, progress=False)
    return str(root)


@pytest.fixture(scope="module")
def full_run(data, tmp_path_factory):
    from cine_jax.train import motion

    out = str(tmp_path_factory.mktemp("motion_full") / "run")
    res = loop.run(motion.make_stage(_cfg()), data, out, _cfg(), mesh=loop.make_mesh(1), progress=False)
    return out, res


def _rows(out):
    return [json.loads(x) for x in open(os.path.join(out, "metrics.jsonl"))]


def test_batches_are_deterministic_and_targets_are_the_scaled_flow(data):
    from cine_jax.train import motion

    cfg = _cfg()
    b3 = next(motion.batches(data, cfg, "train", 0, 3))
    it = motion.batches(data, cfg, "train", 0, 0)
    for _ in range(3):
        next(it)
    again = next(it)
    for k in ("inputs", "flow"):
        np.testing.assert_array_equal(b3[k], again[k])
    assert b3["inputs"].shape == (4, 256, 256, 6) and b3["flow"].shape == (4, 256, 256, 2)
    # the target of each sample is its clip's flow scaled to 256 px and resized bilinearly: OpenCV
    # INTER_LINEAR (half-pixel centres) is an independent implementation of that upsampling
    clips = motion.load_clips(data, cfg, "train")
    refs = [cv2.resize(c["flow"] * np.array([256 / 64, 256 / 48], np.float32), (256, 256),
                       interpolation=cv2.INTER_LINEAR) for c in clips]
    for target in b3["flow"]:
        err = min(np.abs(target - r).max() for r in refs)
        assert err < 1e-4, err
    # the hint channels are zero away from the mask (the masked field is resized bilinearly: its support
    # grows by at most one source pixel = 4 px at 256 / 64)
    hints, mask = b3["inputs"][..., 4:6], b3["inputs"][..., 3]
    near = np.stack([cv2.dilate((m > 0).astype(np.uint8), np.ones((9, 9), np.uint8)) for m in mask]) > 0
    assert np.all(hints[~near] == 0) and np.abs(hints).max() > 0
    assert b3["inputs"][..., :3].min() >= -1 and b3["inputs"][..., :3].max() <= 1


def test_real_clip_folders_get_estimated_flow_and_mask(tmp_path):
    """A folder of plain frames (no flow.npy) is a real clip: DIS flow + speed mask (clips.py), then samples."""
    from cine_jax import io
    from cine_jax.train import motion

    clip = procedural.make_clip([5, 0], size=(96, 128), frames=5, views=1)
    os.makedirs(tmp_path / "real" / "river")
    for t, fr in enumerate(clip["frames"]):
        io.write_png(str(tmp_path / "real" / "river" / f"f{t}.png"), fr)
    (got,) = motion.load_clips(str(tmp_path / "real"), _cfg(), "train")
    inner = cv2.erode(clip["mask"].astype(np.uint8), np.ones((9, 9), np.uint8)) > 0  # away from the banks
    err = np.linalg.norm(got["flow"][inner] - clip["flow"][inner], axis=-1)
    assert np.median(err) < 0.25, np.median(err)  # the estimate is close to the exact river flow
    assert got["mask"][inner].mean() > 0.9
    np.testing.assert_array_equal(got["image"], np.round(clip["frames"][0] * 255).astype(np.uint8))
    sample = motion.motion_sample(got, np.random.default_rng(0), 256, (1, 5))
    assert 1 <= len(sample["hints"]) <= 5 and sample["inputs"].shape == (256, 256, 6)


def test_training_reduces_the_flow_error(full_run):
    out, res = full_run
    rows = _rows(out)
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    epe = [r["epe"] for r in rows]
    assert np.mean(epe[-3:]) < 0.8 * np.mean(epe[:3]), epe
    assert all(np.isfinite(r["d_loss"]) and np.isfinite(r["g_fm"]) for r in rows)
    assert os.listdir(os.path.join(out, "samples")) == ["step_0000010_image_hints_pred_gt.png"]


def test_resume_is_bit_identical(data, full_run, tmp_path):
    from cine_jax.train import motion

    out_full, full = full_run
    part = str(tmp_path / "part")
    loop.run(motion.make_stage(_cfg()), data, part, _cfg(STEPS // 2), mesh=loop.make_mesh(1), progress=False)
    resumed = loop.run(motion.make_stage(_cfg()), data, part, _cfg(), resume=True, mesh=loop.make_mesh(1),
                       progress=False)
    assert [r["step"] for r in _rows(part)] == list(range(1, STEPS + 1))
    for a, b in zip(jax.tree.leaves(full["state"]), jax.tree.leaves(resumed["state"]), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_four_devices_equal_one_device(data, full_run, tmp_path):
    from cine_jax.train import motion

    out_full, _ = full_run
    steps = 2
    four = loop.run(motion.make_stage(_cfg()), data, str(tmp_path / "four"), _cfg(steps), mesh=loop.make_mesh(4),
                    progress=False)
    one = _rows(out_full)[:steps]
    # the losses of steps 1 and 2 (step 2's depends on step 1's update); the batch mean over 4 devices is a
    # cross-device sum: equal to float32 reassociation (stated tolerance: 1e-4 relative)
    for a, b in zip(_rows(str(tmp_path / "four")), one):
        for k in ("loss", "epe", "g_fm", "d_loss"):
            np.testing.assert_allclose(a[k], b[k], rtol=1e-4, atol=1e-6)
    g = four["state"]["g"]["dconv8"]["weight_orig"]
    assert g.sharding.is_fully_replicated and len(g.sharding.device_set) == 4


def test_export_loads_in_animate_weights(full_run):
    from cine_jax import learned
    from cine_jax.nets.checkpoints import load_converted
    from configs import cinemagraph

    out, res = full_run
    module, variables = load_converted(os.path.join(out, "weights", "motion"), "SPADEUnet4MaskMotion")
    np.testing.assert_array_equal(variables["params"]["conv1"]["weight_orig"],
                                  np.asarray(res["state"]["g"]["conv1"]["weight_orig"]))
    np.testing.assert_array_equal(variables["spectral"]["dconv8"]["weight_u"],
                                  np.asarray(res["state"]["g_spectral"]["dconv8"]["weight_u"]))
    assert module.num_filters == 4 and module.spade_hidden == 8
    cfg = cinemagraph.get_config("tiny")
    cfg.models.dir = os.path.join(out, "weights")
    sel = learned.resolve(cfg)
    assert "motion" in sel.learned()


def _cli(argv, capsys):
    code = cli.main(argv)
    err = capsys.readouterr().err
    return code, err


def test_cli_errors_are_one_line(data, tmp_path, capsys):
    out = str(tmp_path / "o")
    code, err = _cli(["train", "motion", str(tmp_path / "nope"), "--out", out, "--config", "tiny"], capsys)
    assert code == 2 and "nope: data folder not found" in err and len(err.strip().splitlines()) == 1
    empty = tmp_path / "empty"
    empty.mkdir()
    code, err = _cli(["train", "motion", str(empty), "--out", out, "--config", "tiny"], capsys)
    assert code == 2 and "no clips found" in err and str(empty) in err
    # a procedural clip whose mask has another size than its flow
    bad = tmp_path / "bad"
    clip = bad / "clip_0000"
    os.makedirs(clip / "frames")
    src = os.path.join(data, "train", "clip_0000")
    for name in ("flow.npy", os.path.join("frames", "000.png")):
        with open(os.path.join(src, name), "rb") as f, open(clip / name, "wb") as g:
            g.write(f.read())
    cv2.imwrite(str(clip / "mask.png"), np.full((10, 12), 255, np.uint8))
    code, err = _cli(["train", "motion", str(bad), "--out", out, "--config", "tiny"], capsys)
    assert code == 2 and "mask.png: size 12x10 differs from flow.npy's 64x48" in err, err
    code, err = _cli(["train", "sideways", data, "--out", out, "--config", "tiny"], capsys)
    assert code == 2 and "unknown stage 'sideways'" in err
    code, err = _cli(["train", "motion", data, "--out", out, "--config", "tiny", "--config.motion.size=300"], capsys)
    assert code == 2 and "motion.size" in err
    code, err = _cli(["train", "motion", data, "--out", out, "--config", "tiny", "--steps", "0"], capsys)
    assert code == 2 and "--steps" in err
    assert not os.path.exists(os.path.join(out, "checkpoints"))  # nothing ran
    import importlib.util

    if importlib.util.find_spec("cine_jax.train.render") is None:  # until the render stage is merged
        code, err = _cli(["train", "render", data, "--out", out, "--config", "tiny"], capsys)
        assert code == 2 and "no render stage" in err
