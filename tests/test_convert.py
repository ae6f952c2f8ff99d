"""cine_jax.convert and cine_jax.nets.checkpoints: official files -> Flax variables, and clear errors.

The files are written by tests/torch_reference/cine_files.py in the official layouts (torch.save of
{"netG": ...} and of {"feature_net", "img_decoder", "netD", "optimG", ...}).
"""

import json
import os
import shutil
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import cine_jax.convert as C  # noqa: E402
from cine_jax.nets import checkpoints as ck  # noqa: E402
from tests.torch_reference import torch_threads  # noqa: E402
from tests.torch_reference.cine_files import official_model, small_sceneflow  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def sceneflow_state():
    src, ref = small_sceneflow()
    return src, {k: v.clone() for k, v in ref.state_dict().items()}


def test_model_file_converts_both_networks_exactly():
    _, src, out, feats, dec = official_model()
    assert sorted(os.listdir(out)) == [
        "feature_net.json", "feature_net.safetensors", "img_decoder.json", "img_decoder.safetensors",
    ]
    for name, ref, cls in (("feature_net", feats, "ResUNet"), ("img_decoder", dec, "ImgDecoder")):
        meta = json.load(open(f"{out}/{name}.json"))
        assert meta["module"].endswith(":" + cls) and meta["source"]["entry"] == name
        assert meta["source"]["not_converted"] == ["netD", "optimD", "optimG", "schedD", "schedG"]
        sd = ref.state_dict()
        assert meta["num_params"] == sum(v.numel() for v in sd.values())
        _, variables = ck.load_converted(f"{out}/{name}.json", expected_class=cls)
        flat = ck._flatten(variables)
        assert len(flat) == len(sd)
        for path, value in flat.items():
            want = sd[ck.torch_key(path)].numpy()
            np.testing.assert_array_equal(np.asarray(value), want.transpose(2, 3, 1, 0) if want.ndim == 4 else want)


def test_folder_conversion_picks_every_official_file(tmp_path, monkeypatch):
    """A folder: every recognised entry goes to its converter, other files are left alone. (The model file's
    conversion itself is checked above; here its converter only records the call.)"""
    monkeypatch.setattr(C, "_REGISTRY", dict(C._REGISTRY))
    seen = []
    real = C._REGISTRY["model"]
    monkeypatch.setitem(C._REGISTRY, "model", C.Converter("model", lambda s, o: seen.append(s) or [], real.patterns))
    folder = tmp_path / "ckpts"
    folder.mkdir()
    shutil.copy(small_sceneflow()[0], folder / "sceneflow_model.pth")
    (folder / "model_150000.pth").write_bytes(b"stand-in")
    (folder / "README.txt").write_text("not a checkpoint")
    written = C.convert(folder, tmp_path / "out")
    assert sorted(os.path.basename(p) for p in written) == ["motion.json", "motion.safetensors"]
    assert seen == [str(folder / "model_150000.pth")]
    module, _ = ck.load_converted(tmp_path / "out" / "motion.safetensors", expected_class="SPADEUnet4MaskMotion")
    assert module.num_filters == 8


def test_truncated_checkpoint_is_a_clear_error(tmp_path, sceneflow_state):
    src, _ = sceneflow_state
    bad = tmp_path / "sceneflow_model.pth"
    data = open(src, "rb").read()
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"sceneflow_model\.pth: cannot read PyTorch checkpoint, truncated"):
        C.convert(bad, tmp_path / "out")
    empty = tmp_path / "empty" / "sceneflow_model.pth"
    empty.parent.mkdir()
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="is empty"):
        C.convert(empty, tmp_path / "out")
    assert not (tmp_path / "out").exists() or not os.listdir(tmp_path / "out")


def test_wrong_shape_names_file_key_and_expected_shape(tmp_path, sceneflow_state):
    _, sd = sceneflow_state
    sd = dict(sd)
    sd["motion_predictor.dconv3.weight_orig"] = torch.zeros(64, 128, 3, 4)
    path = tmp_path / "sceneflow_model.pth"
    torch.save({"netG": sd}, path)
    with pytest.raises(ValueError) as e:
        C.convert(path, tmp_path / "out")
    msg = str(e.value)
    assert msg.startswith(str(path))
    assert "motion_predictor.dconv3.weight_orig: expected shape [64, 128, 3, 3], found [64, 128, 3, 4]" in msg
    assert not (tmp_path / "out").exists()


def test_missing_and_unexpected_keys_are_listed(tmp_path, sceneflow_state):
    _, sd = sceneflow_state
    sd = dict(sd)
    del sd["motion_predictor.spade_layer4_1.mlp_beta.bias"]
    sd["motion_predictor.extra.weight"] = torch.zeros(3)
    path = tmp_path / "sceneflow_model.pth"
    torch.save({"netG": sd}, path)
    with pytest.raises(ValueError) as e:
        C.convert(path, tmp_path / "out")
    msg = str(e.value)
    assert "missing keys (1): motion_predictor.spade_layer4_1.mlp_beta.bias (expected shape [32])" in msg
    assert "unexpected keys (1): motion_predictor.extra.weight" in msg


def test_missing_entry_and_unrecognised_files(tmp_path, sceneflow_state):
    _, sd = sceneflow_state
    path = tmp_path / "sceneflow_model.pth"
    torch.save({"model": sd}, path)
    with pytest.raises(ValueError, match=r"no entry 'netG'; top-level entries: \['model'\]"):
        C.convert(path, tmp_path / "out")
    other = tmp_path / "weights.pth"
    torch.save({"netG": sd}, other)
    with pytest.raises(ValueError, match="not a recognised official checkpoint"):
        C.convert(other, tmp_path / "out")
    assert [os.path.basename(p) for p in C.convert(other, tmp_path / "out", kind="sceneflow")] == [
        "motion.safetensors", "motion.json",
    ]
    with pytest.raises(ValueError, match="unknown converter kind"):
        C.convert(other, tmp_path / "out", kind="nope")
    with pytest.raises(ValueError, match="no such file"):
        C.convert(tmp_path / "missing.pth", tmp_path / "out")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(ValueError, match="holds no recognised"):
        C.convert(tmp_path / "empty_dir", tmp_path / "out")


def test_registry_is_extensible(tmp_path, monkeypatch):
    monkeypatch.setattr(C, "_REGISTRY", dict(C._REGISTRY))
    calls = []

    def fake(src, out_dir):
        calls.append(src)
        os.makedirs(out_dir, exist_ok=True)
        p = os.path.join(out_dir, "fake.json")
        open(p, "w").write("{}")
        return [p]

    C.register_converter("fake", fake, patterns=("*.fake",), description="test converter")
    with pytest.raises(ValueError, match="already registered"):
        C.register_converter("fake", fake)
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.fake").write_text("x")
    (folder / "b.txt").write_text("x")
    assert C.convert(folder, tmp_path / "out") == [str(tmp_path / "out" / "fake.json")]
    assert calls == [str(folder / "a.fake")]
    # a converter may claim a whole folder (e.g. a transformers model folder)
    C.register_converter("folder", fake, matcher=lambda p: os.path.isfile(os.path.join(p, "config.json")))
    (folder / "config.json").write_text("{}")
    C.convert(folder, tmp_path / "out2")
    assert calls[-1] == str(folder)
    assert "fake" in C.converters() and "sceneflow" in C.converters()


def test_load_converted_errors(tmp_path):
    _, _, out, *_ = official_model()
    for ext in ("json", "safetensors"):
        shutil.copy(f"{out}/img_decoder.{ext}", tmp_path / f"img_decoder.{ext}")
    with pytest.raises(ValueError, match="holds a ImgDecoder, expected a ResUNet"):
        ck.load_converted(tmp_path / "img_decoder", expected_class="ResUNet")
    with pytest.raises(ValueError, match="not found"):
        ck.load_converted(tmp_path / "feature_net")
    module, variables = ck.load_converted(tmp_path / "img_decoder", dtype=jnp.bfloat16)
    assert module.dtype == jnp.bfloat16 and variables["params"]["alpha"].dtype == jnp.bfloat16
    meta = json.load(open(tmp_path / "img_decoder.json"))
    meta["config"]["in_ch"] = 36
    json.dump(meta, open(tmp_path / "img_decoder.json", "w"))
    with pytest.raises(ValueError, match=r"firstconv/kernel: expected shape \[7, 7, 36, 32\], found \[7, 7, 37, 32\]"):
        ck.load_converted(tmp_path / "img_decoder")
    meta["config"]["bogus"] = 1
    json.dump(meta, open(tmp_path / "img_decoder.json", "w"))
    with pytest.raises(ValueError, match="config key 'bogus'"):
        ck.load_converted(tmp_path / "img_decoder")
    (tmp_path / "img_decoder.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        ck.load_converted(tmp_path / "img_decoder")


def test_read_checkpoint_safetensors(tmp_path):
    from safetensors.numpy import save_file

    save_file({"a.weight": np.ones((2, 3), np.float32)}, str(tmp_path / "x.safetensors"))
    assert ck.read_checkpoint(tmp_path / "x.safetensors")["a.weight"].shape == (2, 3)
    (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage")
    with pytest.raises(ValueError, match=r"bad\.safetensors: cannot read safetensors file"):
        ck.read_checkpoint(tmp_path / "bad.safetensors")
    with pytest.raises(ValueError, match="unknown checkpoint type"):
        (tmp_path / "x.npz").write_bytes(b"x")
        ck.read_checkpoint(tmp_path / "x.npz")


def test_main_exit_codes(tmp_path, capsys, sceneflow_state):
    src, _ = sceneflow_state
    assert C.main([src, "--to", str(tmp_path / "out")]) == 0
    assert "motion.safetensors" in capsys.readouterr().out
    assert C.main([str(tmp_path / "nothing.pth"), "--to", str(tmp_path / "out")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_importing_cine_jax_does_not_import_torch():
    code = (
        "import sys, cine_jax, cine_jax.convert, cine_jax.nets, cine_jax.nets.checkpoints, "
        "cine_jax.nets.motion, cine_jax.nets.features, cine_jax.nets.decoder, cine_jax.nets.inpaint, "
        "cine_jax.nets.dpt, cine_jax.learned, cine_jax.pipeline, cine_jax.cli\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "print('ok')"
    )
    env = {**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


# ------------------------------------------------------------------------ inpainting and DPT converters

SMALL_INPAINT = (8, 16, 16, 16, 16, 16, 16)


def _inpaint_file(tmp_path, kind, seed):
    from tests.torch_reference.cine_inpaint import PartialConvUNetRef, randomize_

    ref = randomize_(PartialConvUNetRef(kind, widths=SMALL_INPAINT), seed).eval()
    path = tmp_path / ("depth-model.pth" if kind == "depth" else "color-model.pth")
    torch.save(ref.state_dict(), path)
    return path, ref


@pytest.mark.parametrize("kind", ["depth", "color"])
def test_inpaint_files_convert_with_widths_read_off_the_shapes(tmp_path, kind):
    """Random narrow 3D-Photo nets in the official layout (plain state dict) -> convert -> load_converted ->
    forward_3p equals the PyTorch reference (relative error <= 1e-4, 40 x 56 padded to 128 x 128)."""
    import jax

    from cine_jax.nets import inpaint as ip

    path, ref = _inpaint_file(tmp_path, kind, seed=3)
    written = C.convert(path, tmp_path / "out")
    name = "inpaint_depth" if kind == "depth" else "inpaint_color"
    assert sorted(os.path.basename(p) for p in written) == [f"{name}.json", f"{name}.safetensors"]
    module, variables = ck.load_converted(tmp_path / "out" / name, expected_class="PartialConvUNet")
    assert module.config.widths == SMALL_INPAINT and module.config.out_sigmoid == (kind == "color")
    cin = module.config.in_channels
    x = np.random.default_rng(0).normal(size=(1, 40, 56, cin)).astype(np.float32)
    x[..., -2] = (np.random.default_rng(1).random((40, 56)) > 0.4)
    x[..., -1] = 1.0 - x[..., -2]
    with torch.no_grad():
        want = ref.forward_3p(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy().transpose(0, 2, 3, 1)
    got = np.asarray(jax.jit(lambda v, a: ip.forward_3p(module, v, a))(variables, x))
    assert np.abs(got - want).max() / np.abs(want).max() <= 1e-4


def test_inpaint_truncated_and_wrong_shape(tmp_path):
    path, ref = _inpaint_file(tmp_path, "color", seed=4)
    data = path.read_bytes()
    bad = tmp_path / "trunc" / "color-model.pth"
    bad.parent.mkdir()
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"color-model.pth: cannot read PyTorch checkpoint, truncated"):
        C.convert(bad, tmp_path / "out")
    sd = dict(ref.state_dict())
    sd["dec_3A.bn.running_var"] = torch.ones(17)
    torch.save(sd, path)
    with pytest.raises(ValueError) as e:
        C.convert(path, tmp_path / "out")
    assert str(e.value).startswith(str(path))
    assert "dec_3A.bn.running_var has shape (17,), expected (16,)" in str(e.value)
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def tiny_dpt_folder(tmp_path_factory):
    """A random tiny hybrid transformers DPTForDepthEstimation saved with save_pretrained."""
    transformers = pytest.importorskip("transformers")
    from tests.test_nets_dpt import randomize_, tiny_hf_config

    torch.manual_seed(0)
    model = randomize_(transformers.DPTForDepthEstimation(tiny_hf_config()), 1)
    folder = tmp_path_factory.mktemp("dpt") / "dpt-hybrid-tiny"
    model.save_pretrained(str(folder))
    return folder, model


def test_transformers_dpt_folder_converts_and_matches(tmp_path, tiny_dpt_folder):
    """The folder is recognised by its config.json; the converted DPT equals transformers' PyTorch model
    (an independent implementation) within relative error 1e-4 on a 64 x 64 input."""
    import jax

    folder, model = tiny_dpt_folder
    written = C.convert(folder, tmp_path / "out")
    assert sorted(os.path.basename(p) for p in written) == ["dpt.json", "dpt.safetensors"]
    module, variables = ck.load_converted(tmp_path / "out" / "dpt.json", expected_class="DPTHybrid")
    assert module.config.head_align_corners and module.config.hidden_size == 32
    x = np.random.default_rng(2).normal(size=(1, 64, 64, 3)).astype(np.float32)
    with torch.no_grad():
        want = model(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).predicted_depth.numpy()
    got = np.asarray(jax.jit(module.apply)(variables, x))
    assert np.abs(got - want).max() / np.abs(want).max() <= 1e-4


def test_midas_dpt_file_errors_name_the_key_and_expected_shape(tmp_path, tiny_dpt_folder):
    """The MiDaS file is the official DPT-Hybrid (config fixed): a file of another size is refused with the
    key and the official shape; a truncated file is a clear error."""
    from tests.test_nets_dpt import midas_state_dict_from_transformers

    _, model = tiny_dpt_folder
    sd = midas_state_dict_from_transformers(model.state_dict(), 4, 32)
    path = tmp_path / "dpt_hybrid-midas-501f0c75.pt"
    torch.save({k: v.contiguous() for k, v in sd.items() if ".head." not in k}, path)
    with pytest.raises(ValueError) as e:
        C.convert(path, tmp_path / "out")
    msg = str(e.value)
    assert msg.startswith(str(path)) and "missing key(s): pretrained.model" in msg
    assert "pretrained.model.blocks.3.attn.qkv.weight has shape (96, 32), expected (2304, 768)" in msg
    data = path.read_bytes()
    path.write_bytes(data[:1000])
    with pytest.raises(ValueError, match="truncated or not a weights file"):
        C.convert(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli_convert_subcommand(tmp_path, capsys, sceneflow_state):
    from cine_jax import cli

    src, _ = sceneflow_state
    out = tmp_path / "w"
    assert cli.main(["convert", src, "--to", str(out)]) == 0
    assert "motion.safetensors" in capsys.readouterr().out
    assert cli.main(["convert", src, "--to", str(out)]) == 2  # the folder holds results now
    assert "pass --overwrite" in capsys.readouterr().err
    assert cli.main(["convert", src, "--to", str(out), "--overwrite"]) == 0
    capsys.readouterr()
    assert cli.main(["convert", str(tmp_path / "none.pth"), "--to", str(tmp_path / "w2")]) == 2
    assert "none.pth: no such file or folder (SRC)" in capsys.readouterr().err
    assert cli.main(["convert", src, "--to", str(tmp_path / "w3"), "--kind", "nope"]) == 2
    assert "--kind: unknown converter 'nope'" in capsys.readouterr().err
    assert not (tmp_path / "w2").exists() and not (tmp_path / "w3").exists()


def test_widths_read_off_a_state_dict_name_the_file_and_key():
    from cine_jax.nets import decoder, features, motion

    bad = {"conv1.weight": np.zeros((64, 4, 7))}  # 3-D: not a conv weight
    for mod, key, what in ((features, "conv1.weight", "ResUNet"), (decoder, "firstconv.weight", "ImgDecoder"),
                           (motion, "conv1.weight_orig", "SPADEUnet4MaskMotion")):
        with pytest.raises(ValueError, match=rf"^ckpt\.pth: missing conv weight {key} \(not a {what} state dict"):
            mod.config_from_state_dict(bad, path="ckpt.pth")
    assert features.config_from_state_dict({"conv1.weight": np.zeros((64, 4, 7, 7)),
                                            "out_conv.weight": np.zeros((32, 64, 3, 3))}) == {"in_ch": 4, "out_ch": 32}
