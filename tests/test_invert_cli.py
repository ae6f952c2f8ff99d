"""`four-d invert`: textual inversion on a tiny SD folder through the clitools error path."""

import os

import cv2
import numpy as np
import pytest

pytest.importorskip("torch")
import priors_tiny as tiny  # noqa: E402

from four_d import cli  # noqa: E402
from four_d import stage_priors as sp  # noqa: E402
from four_d.priors.textual_inversion import read_learned_embeds  # noqa: E402


def image_file(tmp_path, alpha=False):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (40, 48, 4 if alpha else 3), dtype=np.uint8)
    path = str(tmp_path / ("ref.png"))
    cv2.imwrite(path, img)
    return path


def run(argv, capsys):
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_invert_writes_embeds_that_load_stage_priors_reads(tmp_path, capsys):
    """A few steps on the tiny SD folder; the file goes into a --weights folder and changes the fine-stage prompt."""
    weights = str(tmp_path / "weights")
    os.makedirs(weights)
    for name, folder in (("sd15", tiny.sd_folder(True)), ("zero123-xl", tiny.zero123_folder("cc_projection")),
                         ("modelscope", tiny.video_folder()), ("controlnet-tile", tiny.controlnet_folder())):
        os.symlink(folder, os.path.join(weights, name))
    img = image_file(tmp_path, alpha=True)
    code, out, err = run(["invert", img, "--token", "_cat_", "--init-word", "a", "--sd", tiny.sd_folder(True), "--out",
                          weights, "--overwrite", "--config", "tiny", "--steps", "2", "--no-progress"], capsys)
    assert code == 0, err
    path = os.path.join(weights, "learned_embeds.safetensors")
    assert path in out
    ((tok, emb),) = read_learned_embeds(path).items()
    assert tok == "_cat_" and emb.shape == (tiny.HIDDEN,) and np.isfinite(emb).all()
    found = sp.check_weights_dir(weights, ("fine",), "a <token> is dancing")
    assert found["learned_embeds"] == path
    # the learned vector moved away from its initialisation (the embedding row of "a")
    from four_d.priors import sd as sd_lib
    from four_d.priors.textual_inversion import _table, load_learned_embeds

    model, params = sd_lib.load_stable_diffusion(tiny.sd_folder(True))
    a_id = model.tokenizer.encode("a", add_special_tokens=False)[0]
    assert np.abs(emb - np.asarray(_table(params["text_encoder"])[a_id])).max() > 1e-6
    # loaded back: the token prompt's embedding differs from the same prompt with the init word
    text, text_p, tok_, _ = load_learned_embeds(model.text_encoder, params["text_encoder"], model.tokenizer, path)
    from four_d.priors import common

    e_tok = common.encode_text(text, text_p, tok_, ["a _cat_ is dancing"])
    e_init = common.encode_text(text, text_p, tok_, ["a a is dancing"])
    assert float(np.abs(np.asarray(e_tok) - np.asarray(e_init)).max()) > 1e-4


@pytest.mark.parametrize("case,match", [
    ("missing image", "nope.png: image file not found"),
    ("bad sd", "sd15x: folder not found"),
    ("existing token", "is already a token"),
    ("long init", "--init-word: 'panda dance' is"),
    ("bad steps", "--steps: must be >= 1"),
    ("spaces", "--token: must be one word"),
    ("bad config", "--config"),
])
def test_invert_bad_inputs_one_line(tmp_path, capsys, case, match):
    img = image_file(tmp_path)
    argv = dict(image=img, token="_cat_", init="a", sd=tiny.sd_folder(True), steps="1", config="tiny")
    if case == "missing image":
        argv["image"] = str(tmp_path / "nope.png")
    elif case == "bad sd":
        argv["sd"] = str(tmp_path / "sd15x")
    elif case == "existing token":
        argv["token"] = "a"
    elif case == "long init":
        argv["init"] = "panda dance"
    elif case == "bad steps":
        argv["steps"] = "0"
    elif case == "spaces":
        argv["token"] = "my cat"
    elif case == "bad config":
        argv["config"] = "huge"
    out_dir = tmp_path / "out"
    code, out, err = run(["invert", argv["image"], "--token", argv["token"], "--init-word", argv["init"], "--sd", argv["sd"],
                          "--out", str(out_dir), "--steps", argv["steps"], "--config", argv["config"]], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("four-d: error:") and match in lines[0], err
    assert not out_dir.exists()  # nothing written
