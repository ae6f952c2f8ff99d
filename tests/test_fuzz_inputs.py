"""Fuzzing every file format the command lines read (issue 13): malformed labelme / hints / cameras JSON
(both packages), depth / flow arrays and files, images and masks.

Each generated input is handed to the loader the CLI uses: it must either load (the mutation happened to be
valid) or fail with the clean error types that the CLI turns into one line with exit code 2 (ValueError,
OSError). Any other exception (TypeError, KeyError, IndexError, ZeroDivisionError, ...) would be a traceback
for the user. A smaller sample goes through the real `cine-jax animate` / `four-d fit` command lines and must
end with exit code 2, one line on stderr, and no result written.
"""

import copy
import json
import math
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from cine_jax import cli as cine_cli
from cine_jax import io
from four_d import cli as four_cli
from four_d import fit as four_fit

CLEAN = (ValueError, OSError)
# Derandomized, so CI draws the same inputs every run (a flaky CI lands nothing); set CINE_FUZZ_EXAMPLES (e.g.
# 1000) and CINE_FUZZ_RANDOM=1 to explore new inputs locally.
_N = int(os.environ.get("CINE_FUZZ_EXAMPLES", "60"))
_KW = dict(deadline=None, suppress_health_check=list(HealthCheck), database=None,
           derandomize=os.environ.get("CINE_FUZZ_RANDOM") != "1")
FUZZ = settings(max_examples=_N, **_KW)
FEW = settings(max_examples=max(1, _N // 5), **_KW)

IMAGE_HW = (24, 32)

# JSON values of every kind, including the ones JSON writers produce from NaN / inf
junk = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**12), 10**12)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=12,
)

VALID = {
    "labelme": {
        "imageHeight": IMAGE_HW[0],
        "imageWidth": IMAGE_HW[1],
        "shapes": [
            {"label": "motion", "shape_type": "polygon", "points": [[2, 2], [30, 2], [30, 20], [2, 20]]},
            {"label": "hint1", "shape_type": "line", "points": [[10, 10], [20, 12]]},
        ],
    },
    "hints": {
        "size": [IMAGE_HW[1], IMAGE_HW[0]],
        "frames": 50,
        "mask": [[[2, 2], [30, 2], [30, 20], [2, 20]]],
        "hints": [{"start": [10, 10], "end": [20, 12]}],
    },
    "cameras": {
        "K": [[40.0, 0, 16.0], [0, 40.0, 12.0], [0, 0, 1]],
        "size": [IMAGE_HW[1], IMAGE_HW[0]],
        "poses": [np.eye(4).tolist(), [[1, 0, 0, 0.05], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]],
    },
}


def _paths(doc, prefix=()):
    """Every path to a node of a JSON document."""
    yield prefix
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from _paths(v, prefix + (i,))


@st.composite
def mutated(draw, base):
    """`base` with 1-3 nodes replaced by junk or deleted, or the whole document replaced."""
    doc = copy.deepcopy(base)
    if draw(st.integers(0, 9)) == 0:
        return draw(junk)
    for _ in range(draw(st.integers(1, 3))):
        paths = list(_paths(doc))[1:]
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        node = doc
        for p in path[:-1]:
            node = node[p]
        if draw(st.booleans()) and isinstance(node, dict):
            del node[path[-1]]
        else:
            node[path[-1]] = draw(junk)
    return doc


def _write_json(tmp_path, doc, name="doc.json"):
    path = tmp_path / name
    # allow_nan: NaN / Infinity tokens are what careless writers produce; the loaders must refuse them
    path.write_text(json.dumps(doc, allow_nan=True))
    return str(path)


def _expect_clean(fn, *args, **kw):
    try:
        return fn(*args, **kw)
    except CLEAN:
        return None


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("fuzz")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, IMAGE_HW + (3,), dtype=np.uint8)).save(d / "photo.png")
    return d


# ------------------------------------------------------------------------------------------------
# JSON formats
# ------------------------------------------------------------------------------------------------


@FUZZ
@given(doc=mutated(VALID["labelme"]) | mutated(VALID["hints"]))
def test_annotations_json(workdir, doc):
    path = _write_json(workdir, doc, "ann.json")
    ann = _expect_clean(io.load_annotations, path, IMAGE_HW, IMAGE_HW)
    if ann is not None:  # accepted: then it must be a usable annotation
        assert ann.mask is None or (ann.mask.shape == IMAGE_HW and np.all(np.isfinite(ann.mask)))
        for h in ann.hints:
            assert all(math.isfinite(v) for v in (*h.start, *h.vector)) if hasattr(h, "start") else True


@FUZZ
@given(doc=mutated(VALID["cameras"]))
def test_cine_cameras_json(workdir, doc):
    path = _write_json(workdir, doc, "cams.json")
    got = _expect_clean(io.load_cameras, path, size=IMAGE_HW)
    if got is not None:
        K, K_source, poses = got["K"], got["K_source"], got["poses"]
        assert K.ndim == 3 and K.shape[1:] == (3, 3) and K.shape[0] == poses.shape[0]
        for k in (*K, K_source):
            assert np.all(np.isfinite(k)) and k[0, 0] > 0 and k[1, 1] > 0
        assert poses.ndim == 3 and poses.shape[1:] == (4, 4) and np.all(np.isfinite(poses))


@pytest.fixture(scope="module")
def four_d_dataset(tmp_path_factory):
    d = tmp_path_factory.mktemp("fourd")
    assert four_cli.main(["make-scene", str(d / "data"), "--views", "1", "--test-views", "0", "--times", "1",
                          "--size", "8"]) == 0
    return d / "data"


@FUZZ
@given(data=st.data())
def test_four_d_cameras_json(four_d_dataset, data):
    base = json.loads((four_d_dataset / "cameras.json").read_text())
    doc = data.draw(mutated(base))
    fuzz_dir = four_d_dataset.parent / "fuzzed"
    fuzz_dir.mkdir(exist_ok=True)
    for f in os.listdir(four_d_dataset):
        if f.endswith(".png") and not (fuzz_dir / f).exists():
            os.link(four_d_dataset / f, fuzz_dir / f)
    _write_json(fuzz_dir, doc, "cameras.json")
    got = _expect_clean(four_fit.load_dataset, str(fuzz_dir))
    if got is not None:
        assert got["images"].ndim == 4 and np.all(np.isfinite(got["poses"])) and got["K"].shape == (3, 3)


@FUZZ
@given(raw=st.binary(max_size=64) | st.text(max_size=40).map(lambda t: t.encode("utf-8", "surrogatepass")))
def test_json_files_that_are_not_json(workdir, raw):
    path = workdir / "raw.json"
    path.write_bytes(raw)
    for load in (lambda p: io.load_annotations(p, IMAGE_HW, IMAGE_HW), lambda p: io.load_cameras(p, IMAGE_HW)):
        _expect_clean(load, str(path))


# ------------------------------------------------------------------------------------------------
# arrays and binary files
# ------------------------------------------------------------------------------------------------

dtypes = st.sampled_from(["float32", "float64", "float16", "int32", "uint8", "bool", "complex64", "int64"])
shapes = st.lists(st.integers(0, 6), min_size=0, max_size=4).map(tuple) | st.sampled_from(
    [(12, 16), (12, 16, 1), (12, 16, 2), (3, 4, 2), (24, 32), (24, 32, 2)]
)


@st.composite
def arrays(draw):
    dtype = draw(dtypes)
    shape = draw(shapes)
    elems = None
    if dtype.startswith("float"):
        elems = st.floats(allow_nan=True, allow_infinity=True, width=16 if dtype == "float16" else 32)
    return draw(hnp.arrays(dtype, shape, elements=elems))


@FUZZ
@given(arr=arrays())
def test_depth_npy(workdir, arr):
    path = workdir / "depth.npy"
    np.save(path, arr)
    d = _expect_clean(io.load_depth, str(path), IMAGE_HW, image_size=IMAGE_HW)
    if d is not None:
        assert d.shape == IMAGE_HW and np.all(np.isfinite(d)) and np.all(d > 0)


@FUZZ
@given(arr=arrays())
def test_flow_npy(workdir, arr):
    path = workdir / "flow.npy"
    np.save(path, arr)
    f = _expect_clean(io.load_flow, str(path), IMAGE_HW, image_size=IMAGE_HW)
    if f is not None:
        assert f.shape == IMAGE_HW + (2,) and np.all(np.isfinite(f))


def _valid_bytes(kind):
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, "x." + kind)
        if kind == "flo":
            io.write_flo(p, np.ones((6, 8, 2), np.float32))
        elif kind == "pfm":
            io.write_pfm(p, np.linspace(0.1, 1.0, 48, dtype=np.float32).reshape(6, 8))
        elif kind == "png":
            Image.fromarray(np.arange(48, dtype=np.uint16).reshape(6, 8) * 1000).save(p)
        return open(p, "rb").read()


@st.composite
def corrupted(draw, kind):
    """A valid file of `kind` truncated, with bytes flipped, or random bytes."""
    data = bytearray(_valid_bytes(kind))
    how = draw(st.sampled_from(["truncate", "flip", "random", "append"]))
    if how == "truncate":
        return bytes(data[: draw(st.integers(0, len(data) - 1))])
    if how == "flip":
        for _ in range(draw(st.integers(1, 8))):
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        return bytes(data)
    if how == "append":
        return bytes(data) + draw(st.binary(min_size=1, max_size=16))
    return draw(st.binary(max_size=80))


@FUZZ
@given(raw=corrupted("flo"))
def test_flo_files(workdir, raw):
    path = workdir / "f.flo"
    path.write_bytes(raw)
    f = _expect_clean(io.load_flow, str(path), (6, 8))
    if f is not None:
        assert f.shape == (6, 8, 2) and np.all(np.isfinite(f))


@FUZZ
@given(raw=corrupted("pfm") | corrupted("png"), ext=st.sampled_from([".pfm", ".png"]))
def test_disparity_files(workdir, raw, ext):
    path = workdir / ("d" + ext)
    path.write_bytes(raw)
    d = _expect_clean(io.load_depth, str(path), (6, 8))
    if d is not None:
        assert d.shape == (6, 8) and np.all(np.isfinite(d)) and np.all(d > 0)


@st.composite
def image_bytes(draw):
    """Images PIL can write in odd modes and sizes, possibly corrupted."""
    mode = draw(st.sampled_from(["RGB", "L", "RGBA", "I;16", "1", "P", "LA", "F", "I"]))
    h, w = draw(st.integers(1, 20)), draw(st.integers(1, 20))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    img = Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).convert(mode)
    fmt = draw(st.sampled_from(["PNG", "TIFF", "BMP"] + (["JPEG"] if mode in ("RGB", "L") else [])))
    import io as pyio

    buf = pyio.BytesIO()
    try:
        img.save(buf, format=fmt)
    except OSError:  # e.g. mode F has no PNG / BMP form
        buf = pyio.BytesIO()
        img.save(buf, format="TIFF")
    data = bytearray(buf.getvalue())
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return bytes(data)


@FUZZ
@given(raw=image_bytes() | st.binary(max_size=64))
def test_images_and_masks(workdir, raw):
    path = workdir / "img.png"
    path.write_bytes(raw)
    got = _expect_clean(io.load_image, str(path), max_side=32)
    if got is not None:
        img, _ = got
        assert img.ndim == 3 and img.shape[2] == 3 and np.all((img >= 0) & (img <= 1))
    m = _expect_clean(io.load_mask, str(path), (8, 8))
    if m is not None:
        assert m.shape == (8, 8) and m.max() > 0


# ------------------------------------------------------------------------------------------------
# through the command lines: exit code 2, one line, nothing written
# ------------------------------------------------------------------------------------------------


def _assert_refused(capsys, code, out):
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and ": error: " in err, err
    assert not os.path.exists(out) or os.listdir(out) == [], os.listdir(out)


@FEW
@given(doc=mutated(VALID["hints"]), flag=st.sampled_from(["--hints", "--poses"]))
def test_cine_jax_cli_refuses_malformed_json(workdir, capsys, doc, flag):
    path = _write_json(workdir, doc, "cli.json")
    loader = (lambda p: io.load_annotations(p, IMAGE_HW, IMAGE_HW)) if flag == "--hints" else (
        lambda p: io.load_cameras(p, IMAGE_HW))
    assume(_expect_clean(loader, path) is None)  # only inputs that are malformed
    out = workdir / "cli-out"
    code = cine_cli.main(["animate", str(workdir / "photo.png"), flag, path, "--out", str(out), "--quiet",
                          "--config", "tiny"])
    _assert_refused(capsys, code, out)


@FEW
@given(arr=arrays(), flag=st.sampled_from(["--depth", "--flow"]))
def test_cine_jax_cli_refuses_malformed_arrays(workdir, capsys, arr, flag):
    path = workdir / "cli.npy"
    np.save(path, arr)
    loader = io.load_depth if flag == "--depth" else io.load_flow
    assume(_expect_clean(loader, str(path), IMAGE_HW, image_size=IMAGE_HW) is None)
    out = workdir / "cli-out2"
    extra = ["--flow", str(path)] if flag == "--flow" else ["--depth", str(path)]
    code = cine_cli.main(["animate", str(workdir / "photo.png"), *extra, "--out", str(out), "--quiet",
                          "--config", "tiny"])
    _assert_refused(capsys, code, out)


@FEW
@given(data=st.data())
def test_four_d_cli_refuses_malformed_cameras(four_d_dataset, capsys, data):
    base = json.loads((four_d_dataset / "cameras.json").read_text())
    doc = data.draw(mutated(base))
    fuzz_dir = four_d_dataset.parent / "fuzzed-cli"
    fuzz_dir.mkdir(exist_ok=True)
    for f in os.listdir(four_d_dataset):
        if f.endswith(".png") and not (fuzz_dir / f).exists():
            os.link(four_d_dataset / f, fuzz_dir / f)
    _write_json(fuzz_dir, doc, "cameras.json")
    assume(_expect_clean(four_fit.load_dataset, str(fuzz_dir)) is None)
    out = four_d_dataset.parent / "fit-out"
    code = four_cli.main(["fit", str(fuzz_dir), "--out", str(out), "--config", "tiny", "--no-video",
                          "--no-progress"])
    _assert_refused(capsys, code, out)
