"""four_d/evaluate.py and `four-d eval`: CLIP-I / CLIP-T / CLIP-R / CLIP-F.

Parity: a tiny random transformers PyTorch CLIPModel + tiny CLIPTokenizer + CLIPImageProcessor saved with
save_pretrained and loaded through load_clip; embeddings must match the PyTorch model fed by
CLIPImageProcessor within relative error 1e-4 (max |a - b| / max |b|). Pillow's bicubic resize must be matched
bit for bit. Metric definitions are checked against brute-force NumPy loops on hand-made embeddings.
"""

import functools
import json
import os

import numpy as np
import pytest

from four_d import cli, evaluate

IMAGE = 30  # tiny CLIP input size (even, but every test image is odd-sized)
PATCH = 6


def _tiny_clip_folder(root, preprocessor=True):
    import torch
    from priors_tiny import randomize, write_tokenizer
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    tok = write_tokenizer(os.path.join(root, "tok"))
    text = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                num_attention_heads=4, max_position_embeddings=77, bos_token_id=tok.bos_token_id,
                eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    vision = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                  image_size=IMAGE, patch_size=PATCH)
    torch.manual_seed(0)
    model = randomize(CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)), 5)
    folder = os.path.join(root, "clip")
    model.save_pretrained(folder)  # model.safetensors + config.json
    tok.save_pretrained(folder)
    if preprocessor:
        CLIPImageProcessor(size={"shortest_edge": IMAGE}, crop_size={"height": IMAGE, "width": IMAGE}
                           ).save_pretrained(folder)
    return folder, model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("clip-eval"))
    folder, torch_model = _tiny_clip_folder(root)
    return dict(root=root, folder=folder, torch=torch_model, clip=evaluate.load_clip(folder))


def _rel(a, b):
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / np.max(np.abs(np.asarray(b))))


def _rng_image(seed, h, w, c=3):
    return np.random.default_rng(seed).integers(0, 256, (h, w, c), dtype=np.uint8)


# ------------------------------------------------------------------------------------------- preprocessing
@pytest.mark.parametrize("h,w,nh,nw", [(37, 53, 30, 42), (101, 77, 33, 25), (9, 300, 16, 533), (64, 64, 64, 31)])
def test_bicubic_resize_equals_pillow(h, w, nh, nw):
    from PIL import Image

    img = _rng_image(h * w, h, w)
    want = np.asarray(Image.fromarray(img).resize((nw, nh), resample=Image.Resampling.BICUBIC, reducing_gap=None))
    np.testing.assert_array_equal(evaluate.pil_bicubic_resize(img, nh, nw), want)  # tolerance 0: bit-exact


@pytest.mark.parametrize("shape", [(37, 56), (57, 31), (31, 31)])  # crop offsets odd: 15, 25
def test_preprocess_equals_clip_image_processor(tiny, shape):
    from transformers import CLIPImageProcessor

    img = _rng_image(1, *shape)
    want = CLIPImageProcessor.from_pretrained(tiny["folder"])(images=img, return_tensors="np")["pixel_values"][0]
    got = evaluate.preprocess(img, tiny["clip"].pre)
    assert got.shape == want.shape == (3, IMAGE, IMAGE)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_default_preprocess_without_config_is_openai_clip(tmp_path):
    pre = evaluate._read_preprocess(str(tmp_path), 224)
    assert pre == evaluate.Preprocess(224, None, (224, 224), evaluate.CLIP_MEAN, evaluate.CLIP_STD)


def test_rgba_composited_over_white():
    rgba = np.zeros((3, 5, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[0, 0, 3] = 255
    out = evaluate.to_uint8_rgb(rgba)
    np.testing.assert_array_equal(out[0, 0], [200, 0, 0])
    np.testing.assert_array_equal(out[1, 1], [255, 255, 255])
    np.testing.assert_array_equal(evaluate.to_uint8_rgb(np.full((2, 2, 3), 0.5)), np.full((2, 2, 3), 128))


# -------------------------------------------------------------------------------------------- embeddings
def test_embeddings_match_pytorch_clip(tiny):
    import torch
    from transformers import CLIPImageProcessor, CLIPTokenizer

    imgs = [_rng_image(2, 37, 56), _rng_image(3, 41, 29)]  # odd sizes, landscape and portrait
    proc = CLIPImageProcessor.from_pretrained(tiny["folder"])
    tok = CLIPTokenizer.from_pretrained(tiny["folder"])
    texts = ["a panda is dancing", evaluate.BENCHMARK_CAPTIONS[0]]
    with torch.no_grad():
        pv = torch.from_numpy(proc(images=imgs, return_tensors="np")["pixel_values"])
        want_i = tiny["torch"].get_image_features(pixel_values=pv)
        want_t = tiny["torch"].get_text_features(**tok(texts, padding=True, return_tensors="pt"))
    want_i = torch.nn.functional.normalize(want_i, dim=-1).numpy()
    want_t = torch.nn.functional.normalize(want_t, dim=-1).numpy()
    got_i = evaluate.image_embeddings(tiny["clip"], imgs, batch_size=3)  # padded batch
    got_t = evaluate.text_embeddings(tiny["clip"], texts)
    assert _rel(got_i, want_i) <= 1e-4 and _rel(got_t, want_t) <= 1e-4, (_rel(got_i, want_i), _rel(got_t, want_t))
    np.testing.assert_allclose(np.linalg.norm(got_i, axis=-1), 1.0, atol=1e-5)


def test_load_clip_errors(tmp_path, tiny):
    with pytest.raises(ValueError, match="nope: CLIP folder not found"):
        evaluate.load_clip(str(tmp_path / "nope"))
    with pytest.raises(ValueError, match="config.json: file not found"):
        evaluate.load_clip(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "clip_vision_model"}))
    with pytest.raises(ValueError, match="not a CLIP model"):
        evaluate.load_clip(str(tmp_path))
    with pytest.raises(ValueError, match="tokens, the CLIP text model takes at most 77"):
        evaluate.tokenize(tiny["clip"], ["a" * 200])
    with pytest.raises(ValueError, match="prompt must be a non-empty string"):
        evaluate.evaluate(tiny["clip"], [_rng_image(0, 9, 9)], _rng_image(0, 9, 9), 3)


# ------------------------------------------------------------------------------------------------- metrics
def _brute(ref, frames, text, cands, target):
    def cos(a, b):
        return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))

    n = len(frames)
    ci = sum(cos(ref, f) for f in frames) / n
    ct = sum(cos(f, text) for f in frames) / n
    hits = 0
    for f in frames:
        sims = [cos(f, c) for c in cands]
        best = max(range(len(cands)), key=lambda m: (sims[m], -m))
        hits += best == target
    cf = sum(cos(frames[i], frames[i + 1]) for i in range(n - 1)) / (n - 1)
    return ci, ct, hits / n, cf


def test_metrics_against_brute_force():
    rng = np.random.default_rng(7)
    d, n, m = 6, 9, 5
    # non-unit embeddings with varied norms: the metrics must normalise
    cands = rng.normal(size=(m, d)) * rng.uniform(0.2, 5.0, (m, 1))
    target = 3
    frames = (cands[target] + 2.5 * rng.normal(size=(n, d))) * rng.uniform(0.1, 10.0, (n, 1))
    ref = rng.normal(size=d) * 3.0
    ci, ct, cr, cf = _brute(ref, frames, cands[target], cands, target)
    assert 0.0 < cr < 1.0  # a mix of hits and misses, so the test sees the retrieval
    np.testing.assert_allclose(float(evaluate.clip_i(ref, frames)), ci, rtol=1e-5)
    np.testing.assert_allclose(float(evaluate.clip_t(frames, cands[target])), ct, rtol=1e-5)
    np.testing.assert_allclose(float(evaluate.clip_r(frames, cands, target)), cr, rtol=0, atol=1e-7)
    np.testing.assert_allclose(float(evaluate.clip_f(frames)), cf, rtol=1e-5)


def test_metric_known_answers():
    frames = np.tile(np.array([[0.3, -2.0, 0.5, 1.0]]), (4, 1))
    assert float(evaluate.clip_f(frames)) == pytest.approx(1.0, abs=1e-6)  # identical frames
    # alternating opposite frames: consecutive cosines are all -1
    assert float(evaluate.clip_f(frames * np.array([[1], [-1], [1], [-1]]))) == pytest.approx(-1.0, abs=1e-6)
    # orthogonal caption embeddings; frames equal (up to scale) to caption 2 give R-precision 1
    cands = np.eye(5, 8) * np.arange(1, 6)[:, None]
    frames = np.stack([cands[2] * s for s in (0.5, 1.0, 7.0)]) + 0.01 * np.eye(3, 8, 5)
    assert float(evaluate.clip_r(frames, cands, 2)) == 1.0
    assert float(evaluate.clip_r(frames, cands, 1)) == 0.0
    assert float(evaluate.clip_t(frames[:1], cands[2])) == pytest.approx(1.0, abs=1e-3)
    with pytest.raises(ValueError, match="at least 2 frames"):
        evaluate.clip_f(frames[:1])


def test_retrieval_set_and_captions():
    assert len(evaluate.BENCHMARK_CAPTIONS) == 24 and len(set(evaluate.BENCHMARK_CAPTIONS)) == 24
    cands, t = evaluate.retrieval_set("a panda is dancing")
    assert len(cands) == 24 and cands[t] == "a panda is dancing"
    cands, t = evaluate.retrieval_set("a dog is running")
    assert len(cands) == 25 and t == 24 and cands[t] == "a dog is running"


def test_evaluate_equals_metrics_on_embeddings(tiny):
    clip = tiny["clip"]
    frames = [_rng_image(10 + i, 33, 35) for i in range(3)]
    ref = _rng_image(20, 31, 45, 4)
    res = evaluate.evaluate(clip, frames, ref, "a panda is dancing")
    f = evaluate.image_embeddings(clip, frames)
    r = evaluate.image_embeddings(clip, [evaluate.to_uint8_rgb(ref)])[0]
    c = evaluate.text_embeddings(clip, list(evaluate.BENCHMARK_CAPTIONS))
    want = _brute(r, f, c[14], c, 14)
    got = res["metrics"]
    np.testing.assert_allclose([got["clip_i"], got["clip_t"], got["clip_r"], got["clip_f"]], want, atol=1e-5)
    assert res["retrieval_candidates"] == 24 and res["prompt_in_benchmark"]
    one = evaluate.evaluate(clip, frames[:1], ref, "a dog")
    assert one["metrics"]["clip_f"] is None and one["retrieval_candidates"] == 25


# ------------------------------------------------------------------------------------------------------ CLI
@functools.cache
def _frames():
    rng = np.random.default_rng(3)
    base = rng.integers(0, 256, (1, 24, 40, 3))
    return (base + np.arange(4)[:, None, None, None] * 20).clip(0, 255).astype(np.uint8)


def _inputs(root):
    import imageio.v3 as iio

    frames = _frames()
    paths = dict(gif=os.path.join(root, "frames.gif"), dir=os.path.join(root, "frames"),
                 image=os.path.join(root, "ref.png"))
    if not os.path.exists(paths["gif"]):
        iio.imwrite(paths["gif"], frames, loop=0)
        os.makedirs(paths["dir"])
        for i, fr in enumerate(frames):
            iio.imwrite(os.path.join(paths["dir"], f"{i:03d}.png"), fr)
        iio.imwrite(paths["image"], _rng_image(4, 27, 31))
    return paths


def test_cli_eval_writes_table_and_json(tiny, tmp_path, capsys):
    p = _inputs(tiny["root"])
    out = str(tmp_path / "results.json")
    args = ["--prompt", "a panda is dancing", "--image", p["image"], "--clip", tiny["folder"]]
    assert cli.main(["eval", p["gif"], *args, "--out", out]) == 0
    printed = capsys.readouterr().out
    assert "CLIP-R" in printed and "CLIP-F" in printed
    res = json.load(open(out))
    frames = evaluate.read_frames(p["gif"])
    assert len(frames) == 4
    direct = evaluate.evaluate(tiny["clip"], frames, evaluate.read_image(p["image"]), "a panda is dancing")
    for k in ("clip_i", "clip_t", "clip_r", "clip_f"):
        assert res["metrics"][k] == pytest.approx(direct["metrics"][k], abs=1e-6)
    assert res["protocol"] == evaluate.PROTOCOL and res["num_frames"] == 4
    # a folder of PNGs (lossless, unlike the GIF's palette) gives the numbers of the original frames
    out2 = str(tmp_path / "r2.json")
    assert cli.main(["eval", p["dir"], *args, "--out", out2]) == 0
    direct = evaluate.evaluate(tiny["clip"], list(_frames()), evaluate.read_image(p["image"]), "a panda is dancing")
    assert json.load(open(out2))["metrics"] == pytest.approx(direct["metrics"], abs=1e-6)
    # an existing --out is refused without --overwrite
    assert cli.main(["eval", p["dir"], *args, "--out", out2]) == 2
    assert cli.main(["eval", p["dir"], *args, "--out", out2, "--overwrite"]) == 0


def test_cli_eval_reads_mp4(tiny, tmp_path):
    import imageio.v3 as iio

    path = str(tmp_path / "v.mp4")
    iio.imwrite(path, _frames(), fps=8, codec="libx264", macro_block_size=8)
    frames = evaluate.read_frames(path)
    assert len(frames) == 4 and frames[0].shape == (24, 40, 3)
    np.testing.assert_allclose(np.mean(frames[0]), np.mean(_frames()[0]), atol=3)  # lossy codec


@pytest.mark.parametrize("case", ["missing-frames", "bad-video", "empty-dir", "bad-image-in-dir", "missing-image",
                                  "missing-clip", "clip-not-folder", "empty-prompt", "out-dir-missing", "override"])
def test_cli_eval_errors_before_compute(tiny, tmp_path, capsys, monkeypatch, case):
    p = _inputs(tiny["root"])

    def no_compute(*a, **k):
        raise AssertionError("model compute ran for a bad input")

    monkeypatch.setattr(evaluate, "image_embeddings", no_compute)
    frames, image, clip, prompt = p["gif"], p["image"], tiny["folder"], "a panda"
    extra, expect = [], None
    if case == "missing-frames":
        frames, expect = str(tmp_path / "none.mp4"), "none.mp4: no such file or folder"
    elif case == "bad-video":
        frames = str(tmp_path / "bad.mp4")
        open(frames, "wb").write(b"not a video at all")
        expect = "bad.mp4: not a readable video"
    elif case == "empty-dir":
        frames = str(tmp_path / "empty")
        os.makedirs(frames)
        expect = "empty: folder holds no images"
    elif case == "bad-image-in-dir":
        frames = str(tmp_path / "d")
        os.makedirs(frames)
        open(os.path.join(frames, "000.png"), "wb").write(b"garbage")
        expect = "000.png: not a readable image"
    elif case == "missing-image":
        image, expect = str(tmp_path / "ref.png"), "ref.png: file not found"
    elif case == "missing-clip":
        clip, expect = str(tmp_path / "clipdir"), "clipdir: CLIP folder not found"
    elif case == "clip-not-folder":
        clip = str(tmp_path)
        expect = "config.json: file not found"
    elif case == "empty-prompt":
        prompt, expect = "  ", "--prompt: must be a non-empty caption"
    elif case == "out-dir-missing":
        extra, expect = ["--out", str(tmp_path / "no" / "r.json")], "does not exist or is not writable"
    elif case == "override":
        extra, expect = ["--config.x=1"], "eval takes no --config overrides"
    code = cli.main(["eval", frames, "--prompt", prompt, "--image", image, "--clip", clip, *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("four-d: error:") and expect in err, err
