"""Both command lines: a bad input, output folder, option or config value is one line, exit code 2, before
any compute and before anything is written (issue 13)."""

import json
import os
import time

import numpy as np
import pytest
from PIL import Image

from cine_jax import cli as cine_cli
from four_d import cli as four_cli


@pytest.fixture
def photo(tmp_path):
    path = tmp_path / "photo.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(path)
    return path


def _one_line_error(capsys, code, *needles):
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1, err
    for n in needles:
        assert n in err, err
    return err


def _animate(photo, out, *extra):
    return cine_cli.main(["animate", str(photo), "--out", str(out), "--quiet", "--config", "tiny", *extra])


@pytest.mark.parametrize(
    "extra, needles",
    [
        (["--trajectory", "nope"], ["--trajectory", "'nope'", "circle"]),
        (["--config.render.point_radius=-1"], ["'render.point_radius'", "must be > 0"]),
        (["--config.layering.max_layers=-1"], ["'layering.max_layers'", ">= 0"]),
        (["--config.no.such.key=1"], ["unknown config key 'no.such.key'"]),
        (["--config.render.point_radius=big"], ["'render.point_radius'", "expects float"]),
        (["--frames", "1"], ["--frames", "at least 2"]),
        (["--fps", "0"], ["'output.fps'", "> 0"]),
        (["--config", "huge"], ["--config", "'huge'"]),
        (["--hints", "/no/such/hints.json"], ["/no/such/hints.json", "file not found"]),
        (["--trajectory", "side", "--poses", "p.json"], ["not allowed with argument"]),
        (["--no-such-flag"], ["unrecognized arguments: --no-such-flag"]),
    ],
)
def test_cine_jax_animate_refuses_before_compute(photo, tmp_path, capsys, extra, needles):
    out = tmp_path / "out"
    t0 = time.perf_counter()
    code = _animate(photo, out, *extra)
    _one_line_error(capsys, code, *needles)
    assert time.perf_counter() - t0 < 5.0  # no depth, layering or rendering ran (those take longer)
    assert not out.exists()  # nothing written, not even the folder


def test_cine_jax_missing_image_names_it(tmp_path, capsys):
    code = cine_cli.main(["animate", str(tmp_path / "nope.jpg"), "--out", str(tmp_path / "o")])
    _one_line_error(capsys, code, "nope.jpg", "file not found")


def test_cine_jax_output_folder_problems(photo, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    _one_line_error(capsys, _animate(photo, blocker / "out"), "cannot create the output folder")
    full = tmp_path / "full"
    full.mkdir()
    (full / "cinemagraph.mp4").write_bytes(b"old")
    _one_line_error(capsys, _animate(photo, full), "already holds files", "--overwrite")
    assert (full / "cinemagraph.mp4").read_bytes() == b"old"


def test_cine_jax_overwrite_replaces_results(photo, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "stats.json").write_text("stale")
    assert _animate(photo, out, "--overwrite", "--trajectory", "static", "--frames", "2") == 0
    stats = json.loads((out / "stats.json").read_text())
    assert stats["frames"] == 2
    assert not [n for n in os.listdir(out) if ".partial-" in n]


def test_cine_jax_debug_shows_traceback(photo, tmp_path, capsys):
    code = _animate(photo, tmp_path / "o", "--trajectory", "nope", "--debug")
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" in err


# ------------------------------------------------------------------------------------------------
# four-d
# ------------------------------------------------------------------------------------------------


def _scene(tmp_path):
    data = tmp_path / "data"
    assert four_cli.main(["make-scene", str(data), "--views", "1", "--test-views", "0", "--times", "1",
                          "--size", "8"]) == 0
    return data


def _fit(data, out, *extra):
    return four_cli.main(["fit", str(data), "--out", str(out), "--config", "tiny", "--no-video", "--no-progress",
                          *extra])


def test_four_d_fit_dataset_errors_name_the_file(tmp_path, capsys):
    data = _scene(tmp_path)
    capsys.readouterr()
    meta_path = data / "cameras.json"
    meta = json.loads(meta_path.read_text())

    empty = tmp_path / "empty"
    empty.mkdir()
    _one_line_error(capsys, _fit(empty, tmp_path / "o1"), "cameras.json", "not found")

    meta_path.write_text("{not json")
    _one_line_error(capsys, _fit(data, tmp_path / "o2"), str(meta_path), "not valid JSON")

    broken = dict(meta, frames=[dict(meta["frames"][0], file="missing.png")])
    meta_path.write_text(json.dumps(broken))
    _one_line_error(capsys, _fit(data, tmp_path / "o3"), "missing.png", "not found")

    broken = dict(meta, frames=[dict(meta["frames"][0], time=2.0)])
    meta_path.write_text(json.dumps(broken))
    _one_line_error(capsys, _fit(data, tmp_path / "o4"), str(meta_path), "'time' must be a number in [0, 1]")

    broken = dict(meta, K=[[1, 0], [0, 1]])
    meta_path.write_text(json.dumps(broken))
    _one_line_error(capsys, _fit(data, tmp_path / "o5"), str(meta_path), "'K' must be a finite 3x3 matrix")
    for n in range(1, 6):
        assert not (tmp_path / f"o{n}").exists()  # the dataset is checked before the output folder is made


def test_four_d_fit_config_ranges_before_compute(tmp_path, capsys):
    data = _scene(tmp_path)
    capsys.readouterr()
    for extra, needles in [
        (["--config.fit.iterations=0"], ["'fit.iterations'", ">= 1"]),
        (["--config.render.occupancy_decay=1.5"], ["'render.occupancy_decay'", "[0, 1]"]),
        (["--config.fit.shading=phong"], ["'fit.shading'", "lambertian"]),
        (["--config.optim.lr_grid=-1e-3"], ["'optim.lr_grid'", "> 0"]),
        (["--devices", "0"], ["--devices", ">= 1"]),
        (["--config", "huge"], ["--config", "huge"]),
    ]:
        out = tmp_path / "o"
        _one_line_error(capsys, _fit(data, out, *extra), *needles)
        assert not out.exists()


def test_four_d_output_folder_rules(tmp_path, capsys):
    data = _scene(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.json").write_text("{}")
    capsys.readouterr()
    _one_line_error(capsys, _fit(data, out), "already holds files")
    _one_line_error(capsys, _fit(data, out, "--resume", "--overwrite"), "--resume", "--overwrite")
    _one_line_error(capsys, four_cli.main(["make-scene", str(out)]), "already holds files")
    _one_line_error(capsys, four_cli.main(["make-scene", str(tmp_path / "s"), "--times", "0"]), "--times")
