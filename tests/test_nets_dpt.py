"""Tests for cine_jax/nets/dpt.py: DPT-Hybrid in Flax, its converters and the official pre/post-processing.

Reference: transformers' PyTorch `DPTForDepthEstimation` with a tiny hybrid (BiT + ViT) configuration
(shared/reference/offline_assets.md), an independent implementation of the same network; random weights
(all parameters, incl. [CLS], position embeddings and norm affines) are saved with save_pretrained and loaded
back through our converter. The MiDaS layout is produced from the same random model by the inverse of the
key mapping documented in transformers/models/dpt/convert_dpt_hybrid_to_pytorch.py (rename_key and
read_in_q_k_v), saved with torch.save as `dpt_hybrid-midas-501f0c75.pt`. Tolerance: relative error
max|jax - torch| / max|torch| <= 1e-4 in float32.
"""

import dataclasses
import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cine_jax.depth import DepthEstimator
from cine_jax.nets import dpt

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def rel_err(a, b):
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max() / np.abs(b).max())


def tiny_hf_config():
    """The tiny hybrid DPT of offline_assets.md (146k params, 64 x 64 in)."""
    bb = transformers.BitConfig(
        num_channels=3, embedding_size=16, hidden_sizes=[32, 64, 128], depths=[1, 1, 1], layer_type="bottleneck",
        global_padding="same", out_features=["stage1", "stage2", "stage3"], embedding_dynamic_padding=True,
        num_groups=8)
    return transformers.DPTConfig(
        is_hybrid=True, backbone_config=bb, backbone_featmap_shape=[1, 128, 4, 4], image_size=64, patch_size=16,
        hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=37,
        backbone_out_indices=[0, 1, 2, 3], neck_hidden_sizes=[32, 64, 32, 32], fusion_hidden_size=16,
        head_hidden_size=16, readout_type="project")


def randomize_(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            leaf = name.split(".")[-1]
            if leaf in ("cls_token", "position_embeddings"):
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
            elif p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=g) / p[0].numel() ** 0.5)
            elif "norm" in name and leaf == "weight":
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
        model.head.head[4].bias.fill_(0.5)  # keep the final ReLU mostly active
    return model.eval()


def load_folder(path):
    """Tiny local loader of a save_pretrained folder: (config dict, {key: numpy array})."""
    with open(os.path.join(path, "config.json")) as f:
        config = json.load(f)
    st = os.path.join(path, "model.safetensors")
    if os.path.exists(st):
        from safetensors.numpy import load_file

        return config, load_file(st)
    sd = torch.load(os.path.join(path, "pytorch_model.bin"), map_location="cpu", weights_only=True)
    return config, {k: v.numpy() for k, v in sd.items()}


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    """(random tiny transformers model, its save_pretrained folder, our config, our variables)."""
    torch.manual_seed(0)
    model = randomize_(transformers.DPTForDepthEstimation(tiny_hf_config()), 1)
    folder = str(tmp_path_factory.mktemp("dpt_tiny"))
    model.save_pretrained(folder)
    config_json, sd = load_folder(folder)
    src = os.path.join(folder, "model.safetensors")
    cfg = dpt.dpt_config_from_transformers(config_json, source=os.path.join(folder, "config.json"))
    variables = dpt.dpt_params_from_transformers_state_dict(sd, source=src, config=cfg)
    return model, folder, cfg, variables


@pytest.fixture(scope="module")
def batch(hf):
    """A batch of 4 random 64 x 64 inputs and our float32 single-device output on it (compiled once and
    shared by the parity, bfloat16 and sharding tests)."""
    _, _, cfg, variables = hf
    x = np.random.default_rng(0).normal(size=(4, 64, 64, 3)).astype(np.float32)
    return x, np.asarray(jax.jit(dpt.DPTHybrid(cfg).apply)(variables, x))


def torch_depth(model, x_nhwc):
    with torch.no_grad():
        return model(torch.from_numpy(np.transpose(x_nhwc, (0, 3, 1, 2)))).predicted_depth.numpy()


# ------------------------------------------------------------------------------------------ parity


def test_transformers_folder_matches_pytorch(hf, batch, tmp_path):
    model, folder, cfg, variables = hf
    assert cfg.head_align_corners and cfg.layer_norm_eps == 1e-12 and cfg.stage_widths == (32, 64, 128)
    x, got = batch
    want = torch_depth(model, x)
    assert got.shape == want.shape == (4, 64, 64) and want.std() > 1e-2
    assert rel_err(got, want) <= 1e-4, rel_err(got, want)
    # the same weights from a pytorch_model.bin folder convert to the same params
    model.save_pretrained(str(tmp_path), safe_serialization=False)
    assert os.path.exists(tmp_path / "pytorch_model.bin")
    config_json, sd = load_folder(str(tmp_path))
    again = dpt.dpt_params_from_transformers_state_dict(
        sd, source="pytorch_model.bin", config=dpt.dpt_config_from_transformers(config_json, source="c"))
    assert jax.tree.all(jax.tree.map(np.array_equal, again, variables))


def midas_state_dict_from_transformers(sd, num_layers, hidden):
    """Inverse of transformers' convert_dpt_hybrid_to_pytorch.py (rename_key + read_in_q_k_v): transformers
    names -> the official MiDaS / timm names; query, key, value concatenated back into attn.qkv."""
    rules = [
        (r"^dpt\.embeddings\.backbone\.bit\.embedder\.convolution\.",
         "pretrained.model.patch_embed.backbone.stem.conv."),
        (r"^dpt\.embeddings\.backbone\.bit\.embedder\.norm\.", "pretrained.model.patch_embed.backbone.stem.norm."),
        (r"^dpt\.embeddings\.backbone\.bit\.encoder\.stages\.(\d+)\.layers\.(\d+)\.",
         r"pretrained.model.patch_embed.backbone.stages.\1.blocks.\2."),
        (r"^dpt\.embeddings\.projection\.", "pretrained.model.patch_embed.proj."),
        (r"^dpt\.embeddings\.cls_token$", "pretrained.model.cls_token"),
        (r"^dpt\.embeddings\.position_embeddings$", "pretrained.model.pos_embed"),
        (r"^dpt\.encoder\.layer\.(\d+)\.layernorm_before\.", r"pretrained.model.blocks.\1.norm1."),
        (r"^dpt\.encoder\.layer\.(\d+)\.layernorm_after\.", r"pretrained.model.blocks.\1.norm2."),
        (r"^dpt\.encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"pretrained.model.blocks.\1.attn.proj."),
        (r"^dpt\.encoder\.layer\.(\d+)\.intermediate\.dense\.", r"pretrained.model.blocks.\1.mlp.fc1."),
        (r"^dpt\.encoder\.layer\.(\d+)\.output\.dense\.", r"pretrained.model.blocks.\1.mlp.fc2."),
        (r"^dpt\.layernorm\.", "pretrained.model.norm."),
        (r"^neck\.reassemble_stage\.readout_projects\.(\d)\.0\.",
         lambda m: f"pretrained.act_postprocess{int(m[1]) + 1}.0.project.0."),
        (r"^neck\.reassemble_stage\.layers\.(\d)\.projection\.",
         lambda m: f"pretrained.act_postprocess{int(m[1]) + 1}.3."),
        (r"^neck\.reassemble_stage\.layers\.(\d)\.resize\.", lambda m: f"pretrained.act_postprocess{int(m[1]) + 1}.4."),
        (r"^neck\.convs\.(\d)\.", lambda m: f"scratch.layer{int(m[1]) + 1}_rn."),
        (r"^neck\.fusion_stage\.layers\.(\d)\.residual_layer(\d)\.convolution(\d)\.",
         lambda m: f"scratch.refinenet{4 - int(m[1])}.resConfUnit{m[2]}.conv{m[3]}."),
        (r"^neck\.fusion_stage\.layers\.(\d)\.projection\.", lambda m: f"scratch.refinenet{4 - int(m[1])}.out_conv."),
        (r"^head\.head\.", "scratch.output_conv."),
    ]
    out = {}
    for key, value in sd.items():
        if ".attention.attention." in key:
            continue
        for pattern, repl in rules:
            new, n = re.subn(pattern, repl, key)
            if n:
                out[new] = value
                break
        else:
            raise AssertionError(f"no MiDaS name for {key}")
    for i in range(num_layers):
        pre = f"dpt.encoder.layer.{i}.attention.attention"
        for leaf in ("weight", "bias"):
            out[f"pretrained.model.blocks.{i}.attn.qkv.{leaf}"] = torch.cat(
                [sd[f"{pre}.{n}.{leaf}"] for n in ("query", "key", "value")])
    # timm's ImageNet classifier is part of the official checkpoint (dropped by every converter)
    out["pretrained.model.head.weight"] = torch.zeros(10, hidden)
    out["pretrained.model.head.bias"] = torch.zeros(10)
    return out


def test_midas_checkpoint_matches_pytorch(hf, tmp_path):
    """MiDaS names and semantics: timm LayerNorm eps 1e-6, head upsampling align_corners=False. The
    reference is the same transformers model switched to those two settings."""
    model, _, cfg, tf_variables = hf
    midas_sd = midas_state_dict_from_transformers(model.state_dict(), cfg.num_layers, cfg.hidden_size)
    path = tmp_path / "dpt_hybrid-midas-501f0c75.pt"
    torch.save({"model": midas_sd, "optimizer": {"state": {}}}, path)  # BaseModel.load unwraps "model"
    loaded = torch.load(path, map_location="cpu", weights_only=True)
    sd = {"model": {k: v.numpy() for k, v in loaded["model"].items()}, "optimizer": loaded["optimizer"]}
    midas_cfg = dataclasses.replace(cfg, layer_norm_eps=1e-6, head_align_corners=False)
    variables = dpt.dpt_params_from_midas_state_dict(sd, source=str(path), config=midas_cfg)
    assert jax.tree.all(jax.tree.map(np.array_equal, variables, tf_variables))  # same weights, other names

    ref = randomize_(transformers.DPTForDepthEstimation(tiny_hf_config()), 1)
    ref.load_state_dict(model.state_dict())
    for m in ref.modules():
        if isinstance(m, torch.nn.LayerNorm):
            m.eps = 1e-6
    ref.head.head[1].align_corners = False
    x = np.random.default_rng(2).normal(size=(1, 64, 64, 3)).astype(np.float32)
    want = torch_depth(ref, x)
    got = np.asarray(jax.jit(dpt.DPTHybrid(midas_cfg).apply)(variables, x))
    assert rel_err(got, want) <= 1e-4, rel_err(got, want)
    assert rel_err(torch_depth(model, x), want) > 1e-3  # the MiDaS head really differs


def test_real_size_layouts_match_transformers_and_midas_facts():
    """Full DPT-Hybrid (no weights): our transformers key table equals the state dict of transformers'
    DPTForDepthEstimation built on the meta device with the dpt-hybrid-midas settings of
    convert_dpt_hybrid_to_pytorch.py; the MiDaS table has the official names and shapes."""
    hf_cfg = transformers.DPTConfig(is_hybrid=True, hidden_size=768, reassemble_factors=[1, 1, 1, 0.5],
                                    neck_hidden_sizes=[256, 512, 768, 768], patch_size=16, readout_type="project",
                                    use_batch_norm_in_fusion_residual=False, backbone_out_indices=[2, 5, 8, 11])
    with torch.device("meta"):
        model = transformers.DPTForDepthEstimation(hf_cfg)
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    cfg = dpt.dpt_config_from_transformers(hf_cfg.to_dict(), source="config.json")
    assert dpt.transformers_key_shapes(cfg) == want
    no_backbone = {k: v for k, v in hf_cfg.to_dict().items() if k != "backbone_config"}  # transformers' default
    assert dpt.dpt_config_from_transformers(no_backbone, source="config.json") == cfg
    official = dpt.DPTHybridConfig()
    assert cfg.to_dict() == {**official.to_dict(), "layer_norm_eps": 1e-12, "head_align_corners": True,
                             "backbone_out_indices": [2, 5, 8, 11]}
    midas = dpt.midas_key_shapes(official)
    assert len(midas) == len(want) - 2 * 12 * 2  # q, k, v (weight, bias) fused into qkv (weight, bias)
    facts = {
        "pretrained.model.patch_embed.backbone.stem.conv.weight": (64, 3, 7, 7),
        "pretrained.model.patch_embed.backbone.stages.2.blocks.8.conv3.weight": (1024, 256, 1, 1),
        "pretrained.model.patch_embed.backbone.stages.1.blocks.0.downsample.conv.weight": (512, 256, 1, 1),
        "pretrained.model.patch_embed.proj.weight": (768, 1024, 1, 1),
        "pretrained.model.pos_embed": (1, 577, 768),
        "pretrained.model.blocks.11.attn.qkv.weight": (2304, 768),
        "pretrained.act_postprocess3.0.project.0.weight": (768, 1536),
        "pretrained.act_postprocess4.4.weight": (768, 768, 3, 3),
        "scratch.layer2_rn.weight": (256, 512, 3, 3),
        "scratch.refinenet4.resConfUnit1.conv1.weight": (256, 256, 3, 3),
        "scratch.refinenet1.out_conv.weight": (256, 256, 1, 1),
        "scratch.output_conv.2.weight": (32, 128, 3, 3),
        "scratch.output_conv.4.weight": (1, 32, 1, 1),
    }
    for k, shape in facts.items():
        assert midas[k] == shape, k
    # the Flax module initialises exactly the converted tree at the real size
    shapes = jax.eval_shape(dpt.DPTHybrid(official).init, jax.random.PRNGKey(0), jnp.zeros((1, 384, 672, 3)))
    n = sum(int(np.prod(s.shape)) for s in jax.tree.leaves(shapes))
    unused = 2 * 768 + 2 * (256 * 256 * 9 + 256)  # final LayerNorm, refinenet4.resConfUnit1
    assert n == sum(int(np.prod(s)) for s in want.values()) - unused


# ------------------------------------------------------------------------------------------ converter


def test_converter_errors(hf):
    model, folder, cfg, _ = hf
    _, sd = load_folder(folder)
    src = os.path.join(folder, "model.safetensors")
    trunc = {k: v for k, v in sd.items() if k != "neck.convs.1.weight"}
    with pytest.raises(ValueError, match=r"model\.safetensors: 1 missing key\(s\): neck\.convs\.1\.weight "
                                         r"\(16, 64, 3, 3\)"):
        dpt.dpt_params_from_transformers_state_dict(trunc, source=src, config=cfg)
    wrong = dict(sd)
    wrong["dpt.embeddings.position_embeddings"] = np.zeros((1, 10, 32), np.float32)
    with pytest.raises(ValueError, match=r"dpt\.embeddings\.position_embeddings has shape \(1, 10, 32\), "
                                         r"expected \(1, 17, 32\)"):
        dpt.dpt_params_from_transformers_state_dict(wrong, source=src, config=cfg)
    extra = {**sd, "head.projection.weight": np.zeros((256, 256, 3, 3), np.float32)}
    with pytest.raises(ValueError, match=r"unexpected key\(s\): head\.projection\.weight"):
        dpt.dpt_params_from_transformers_state_dict(extra, source=src, config=cfg)
    midas = {k: v.numpy() for k, v in midas_state_dict_from_transformers(
        model.state_dict(), cfg.num_layers, cfg.hidden_size).items()}
    midas_cfg = dataclasses.replace(cfg, layer_norm_eps=1e-6, head_align_corners=False)
    dpt.dpt_params_from_midas_state_dict(midas, source="dpt_hybrid-midas.pt", config=midas_cfg)  # complete: ok
    trunc = {k: v for k, v in midas.items() if k != "pretrained.model.blocks.3.attn.qkv.weight"}
    with pytest.raises(ValueError, match=r"dpt_hybrid-midas\.pt: 1 missing key\(s\): "
                                         r"pretrained\.model\.blocks\.3\.attn\.qkv\.weight \(96, 32\)"):
        dpt.dpt_params_from_midas_state_dict(trunc, source="dpt_hybrid-midas.pt", config=midas_cfg)
    wrong = {**midas, "scratch.output_conv.2.weight": np.zeros((16, 8, 3, 3), np.float32)}
    with pytest.raises(ValueError, match=r"scratch\.output_conv\.2\.weight has shape \(16, 8, 3, 3\), "
                                         r"expected \(32, 8, 3, 3\)"):
        dpt.dpt_params_from_midas_state_dict(wrong, source="dpt_hybrid-midas.pt", config=midas_cfg)
    bad_head = {**midas, "pretrained.model.head.weight": np.zeros((10, 7), np.float32)}
    with pytest.raises(ValueError, match=r"pretrained\.model\.head\.weight/bias have shapes"):
        dpt.dpt_params_from_midas_state_dict(bad_head, source="dpt_hybrid-midas.pt", config=midas_cfg)
    # a transformers file is not a MiDaS file: every MiDaS key is reported missing, with its shape
    with pytest.raises(ValueError, match=r"dpt_hybrid-midas\.pt: \d+ missing key\(s\): pretrained\.model\.patch_"
                                         r"embed\.backbone\.stem\.conv\.weight \(16, 3, 7, 7\).*unexpected"):
        dpt.dpt_params_from_midas_state_dict(sd, source="dpt_hybrid-midas.pt", config=midas_cfg)
    config_json, _ = load_folder(folder)
    for key, value, msg in [("is_hybrid", False, "is_hybrid"), ("readout_type", "add", "readout_type"),
                            ("use_batch_norm_in_fusion_residual", True, "use_batch_norm"),
                            ("backbone_featmap_shape", [1, 64, 4, 4], "backbone_featmap_shape")]:
        with pytest.raises(ValueError, match=rf"config\.json: unsupported DPT config: {msg}"):
            dpt.dpt_config_from_transformers({**config_json, key: value}, source="config.json")
    with pytest.raises(ValueError, match=r"config\.json: .*multiple of num_heads"):
        dpt.dpt_config_from_transformers({**config_json, "num_attention_heads": 5}, source="config.json")


# ------------------------------------------------------------------------------- pre/post-processing


def test_input_size_official_resize():
    assert dpt.dpt_input_size(720, 1280) == (384, 672)  # fact sheet: 1280 x 720 -> 672 x 384
    assert dpt.dpt_input_size(1280, 720) == (672, 384)
    assert dpt.dpt_input_size(427, 640) == (384, 576)  # 640 * 384 / 427 = 575.6
    # smaller than 384: the side whose scale is closer to 1 reaches 384 (here the longer one)
    assert dpt.dpt_input_size(200, 300) == (256, 384)
    assert dpt.dpt_input_size(384, 384) == (384, 384)
    with pytest.raises(ValueError, match="too elongated"):
        dpt.dpt_input_size(10, 5000)


def test_preprocess_quantize_and_depth(rng):
    img = rng.random((60, 90, 3)).astype(np.float32)
    px = dpt.dpt_preprocess(img, net_size=64)
    assert px.shape == (64, 96, 3) and px.dtype == np.float32
    import cv2

    np.testing.assert_allclose(px, cv2.resize(img, (96, 64), interpolation=cv2.INTER_CUBIC) * 2 - 1, atol=1e-6)

    q = dpt.quantize_disparity(np.array([[2.0, 4.0], [3.0, 2.5]], np.float32))
    np.testing.assert_array_equal(q * 65535, [[0, 65535], [32767, 16383]])  # truncation, as astype(uint16)
    np.testing.assert_array_equal(dpt.quantize_disparity(np.full((3, 3), 7.0)), np.zeros((3, 3)))

    disp = rng.random((9, 11))
    depth = dpt.disparity_to_depth(disp)
    # brute-force 5 x 5 median with scipy's default 'reflect' border (mirror incl. the edge pixel)
    padded = np.pad(disp, 2, mode="symmetric")
    med = np.array([[np.median(padded[i:i + 5, j:j + 5]) for j in range(11)] for i in range(9)])
    np.testing.assert_allclose(depth, 1.0 / np.maximum(med, 1e-6), rtol=1e-6)
    assert dpt.disparity_to_depth(np.zeros((6, 6))).max() == pytest.approx(1e6)


def test_depth_estimator_end_to_end(hf):
    """The adapter on a 60 x 90 image with net_size 64: network input 64 x 96, so the position embeddings are
    resized from 4 x 4 to 4 x 6 (MiDaS forward_flex). DPTForDepthEstimation itself only takes its configured
    square size, so its own components are composed as its forward does, with the token grid passed to the
    neck; then torch bicubic upsampling to 60 x 90 as run_monodepth.py. Our disparity equals that."""
    model, _, cfg, variables = hf
    est = dpt.DPTDepthEstimator(variables, cfg, net_size=64)
    assert isinstance(est, DepthEstimator)
    img = np.random.default_rng(3).random((60, 90, 3)).astype(np.float32)
    disp = est.disparity(img)
    px = dpt.dpt_preprocess(img, net_size=64)[None]
    with torch.no_grad():
        t = torch.from_numpy(np.transpose(px, (0, 3, 1, 2)))
        emb = model.dpt.embeddings(t, interpolate_pos_encoding=True)
        enc = model.dpt.encoder(emb.last_hidden_states, output_hidden_states=True)
        states = list(emb.intermediate_activations) + [enc.hidden_states[1:][i] for i in (2, 3)]
        net_out = model.head(model.neck(states, 4, 6))
        want = torch.nn.functional.interpolate(net_out[:, None], size=(60, 90), mode="bicubic",
                                               align_corners=False)[0, 0].numpy()
    assert rel_err(disp, want) <= 1e-4, rel_err(disp, want)
    depth = est(img)
    assert depth.shape == (60, 90) and depth.dtype == np.float32
    assert depth.min() >= 1.0 and np.all(np.isfinite(depth))
    want_depth = dpt.disparity_to_depth(dpt.quantize_disparity(want))
    assert np.mean(np.abs(depth - want_depth) / want_depth < 1e-3) > 0.99
    assert np.array_equal(est(img), depth)  # deterministic
    with pytest.raises(ValueError, match="RGB image"):
        est(img[..., :2])


# ------------------------------------------------------------------------------ precision, sharding


def test_bfloat16_close_to_float32(hf, batch):
    """bfloat16 compute (params float32): relative error <= 5e-2 of the output range."""
    _, _, cfg, variables = hf
    x, f32 = batch
    bf16 = np.asarray(jax.jit(dpt.DPTHybrid(cfg, dtype=jnp.bfloat16).apply)(variables, x), np.float32)
    assert 0 < rel_err(bf16, f32) <= 5e-2, rel_err(bf16, f32)


def test_sharded_batch_equals_single_device(hf, batch, num_devices):
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    _, _, cfg, variables = hf
    net = dpt.DPTHybrid(cfg)
    x, single = batch
    mesh = Mesh(np.array(jax.devices()[:4]), ("data",))
    out = jax.jit(net.apply, out_shardings=NamedSharding(mesh, P("data")))(
        jax.device_put(variables, NamedSharding(mesh, P())), jax.device_put(x, NamedSharding(mesh, P("data"))))
    assert len(out.addressable_shards) == min(4, num_devices)
    np.testing.assert_allclose(np.asarray(out), single, rtol=1e-5, atol=1e-6 * np.abs(single).max())


def test_module_rejects_bad_input(hf):
    _, _, cfg, variables = hf
    with pytest.raises(ValueError, match="multiples of 32"):
        dpt.DPTHybrid(cfg).apply(variables, np.zeros((1, 48, 64, 3), np.float32))
