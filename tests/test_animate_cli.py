"""`four-d animate` end to end with the real architectures on tiny random weights (issue 11, "proven without
real weights" 2): tiny PyTorch-saved SD / zero123 / ModelScope / ControlNet folders loaded through the real
loaders, all three stages a few steps each, checkpoints, metrics, preview videos, the contact sheet, the
reference-view frames, a resume across a stage boundary that reproduces the uninterrupted run exactly, and
`four-d eval OUT` on the result. Errors before compute name the missing folder / bad file."""

import json
import os

import numpy as np
import pytest

pytest.importorskip("torch")

from test_stage_priors import make_weights, rgba_image  # noqa: E402  (tests/ is on sys.path)

from four_d import cli  # noqa: E402

PROMPTS = ["--prompt", "a cat", "--motion-prompt", "a cat is dancing"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    import cv2

    root = tmp_path_factory.mktemp("animate")
    weights = make_weights(str(root / "weights"))
    image = str(root / "cat.png")
    cv2.imwrite(image, cv2.cvtColor(rgba_image(40), cv2.COLOR_RGBA2BGRA))
    return dict(root=root, weights=weights, image=image)


def _run(inputs, out, *extra):
    # One device: the sharded stage steps equal the 1-device ones in tests/test_stages.py; here the CLI runs the
    # three stages end to end, and one device compiles faster than four fake ones.
    argv = ["animate", inputs["image"], *PROMPTS, "--weights", inputs["weights"], "--out", str(out),
            "--config", "tiny", "--size", "32", "--no-progress", "--token-prompt", "a <token> is dancing",
            "--devices", "1", *extra]
    return cli.main(argv)


@pytest.fixture(scope="module")
def full_run(inputs):
    out = inputs["root"] / "full"
    assert _run(inputs, out) == 0
    return out


def test_all_stages_write_checkpoints_metrics_previews(full_run):
    out = full_run
    summary = json.loads((out / "animate.json").read_text())
    assert summary["stopped"] is None
    steps = {"static": 5, "coarse": 9, "fine": 12}  # tiny: 5 + 4 + 3, the global step continued across stages
    for st, end in steps.items():
        entry = summary["stages"][st]
        assert entry["finished"] and entry["step"] == end
        rows = [json.loads(line) for line in (out / st / "metrics.jsonl").read_text().splitlines()]
        assert rows and all(r["stage"] == st for r in rows)
        assert all(np.isfinite(r["loss"]) for r in rows)
        assert rows[-1]["step"] == end
        assert os.listdir(out / st / "checkpoints")
        for ch in ("rgb", "normal", "depth", "opacity"):
            assert os.path.getsize(entry["previews"][ch]) > 0
        assert os.path.getsize(out / st / f"{st}_sheet.png") > 0
        frames = sorted(os.listdir(out / st / "reference_view"))
        assert len(frames) == 4  # tiny cameras.num_test_frames
    for name in ("rgba.png", "mask.png", "depth.npy"):
        assert (out / "reference" / name).exists()


def test_resume_across_stage_boundary_is_exact(inputs, full_run):
    """The fine stage alone with --resume in a copy of the run without its fine folder: it starts from the
    coarse checkpoint on disk (a new process would do the same) and ends with the same reference-view frames
    and losses as the single run."""
    import shutil

    out = inputs["root"] / "split"
    shutil.copytree(full_run, out, symlinks=True)
    shutil.rmtree(out / "fine")
    assert _run(inputs, out, "--stages", "fine", "--resume") == 0
    for k in range(4):
        a = (full_run / "fine" / "reference_view" / f"{k:03d}.png").read_bytes()
        b = (out / "fine" / "reference_view" / f"{k:03d}.png").read_bytes()
        assert a == b
    la = [json.loads(x)["loss"] for x in (full_run / "fine" / "metrics.jsonl").read_text().splitlines()]
    lb = [json.loads(x)["loss"] for x in (out / "fine" / "metrics.jsonl").read_text().splitlines()]
    assert la == lb


def test_eval_reads_the_animate_folder(full_run, inputs, capsys, tmp_path):
    from test_evaluate import _tiny_clip_folder

    clip, _ = _tiny_clip_folder(str(tmp_path))
    res_file = tmp_path / "clip.json"
    assert cli.main(["eval", str(full_run), "--prompt", "a cat is dancing", "--image", inputs["image"],
                     "--clip", clip, "--out", str(res_file)]) == 0
    res = json.loads(res_file.read_text())
    assert res["frames"].endswith(os.path.join("fine", "reference_view"))
    assert res["num_frames"] == 4
    for value in res["metrics"].values():
        assert np.isfinite(value)


def test_missing_weights_folder_named_before_compute(inputs, tmp_path, capsys):
    weights = tmp_path / "w"
    os.makedirs(weights)
    os.symlink(os.path.join(inputs["weights"], "sd15"), weights / "sd15")
    out = tmp_path / "out"
    argv = ["animate", inputs["image"], *PROMPTS, "--weights", str(weights), "--out", str(out), "--config", "tiny"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "zero123-xl" in err[0]
    assert not out.exists()  # nothing written before the inputs are checked


@pytest.mark.parametrize("flag,value,needle", [("--stages", "coarse,static", "--stages"),
                                               ("--stages", "warp", "--stages"),
                                               ("--prompt", " ", "--prompt"),
                                               ("--border-ratio", "1.5", "--border-ratio")])
def test_bad_options_one_line(inputs, tmp_path, capsys, flag, value, needle):
    argv = ["animate", inputs["image"], *PROMPTS, "--weights", inputs["weights"], "--out", str(tmp_path / "o"),
            "--config", "tiny", flag, value]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0]


def test_unreadable_image_named(inputs, tmp_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    argv = ["animate", str(bad), *PROMPTS, "--weights", inputs["weights"], "--out", str(tmp_path / "o"),
            "--config", "tiny"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert str(bad) in err
