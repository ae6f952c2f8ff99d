"""Random reference networks written in the official on-disk layouts (test-only).

The official-width model file (feature net + decoder, ~28M parameters, ~110 MB) is written and converted
once per test process (`official_model`) and shared by the feature-net, decoder and converter tests.
"""

import atexit
import functools
import shutil
import tempfile

import torch

from cine_jax.convert import convert

from . import cine_decoder, cine_features, cine_motion

DECODER_ALPHA = 2.5


def save_sceneflow(path, estimator):
    """sceneflow_model.pth: {"netG": SPADEUnetMaskMotion state dict (keys motion_predictor.*)}."""
    torch.save({"netG": estimator.state_dict()}, path)
    return path


def save_model(path, feature_net, img_decoder):
    """model_XXXXXX.pth as SpaceTimeAnimationModel.save_model writes it: the two networks plus training
    state (a stand-in discriminator and optimiser / scheduler dicts) that the converter must leave alone."""
    torch.save(
        {
            "optimG": {"state": {}, "param_groups": [{"lr": 1e-4, "betas": (0.9, 0.999), "params": [0, 1]}]},
            "schedG": {"step_size": 50000, "gamma": 0.5, "last_epoch": 150000},
            "optimD": {"state": {}, "param_groups": [{"lr": 1e-3, "params": [0]}]},
            "schedD": {"step_size": 50000, "gamma": 0.5, "last_epoch": 150000},
            "feature_net": feature_net.state_dict(),
            "img_decoder": img_decoder.state_dict(),
            "netD": {"netD.netD.scale0.layer0.0.weight_orig": torch.zeros(64, 3, 4, 4)},
        },
        path,
    )
    return path


def _tempdir(prefix):
    d = tempfile.mkdtemp(prefix=prefix)
    atexit.register(shutil.rmtree, d, True)
    return d


@functools.cache
def official_model():
    """(folder, model_150000.pth path, converted folder, feature ResUNetRef, ImgDecoderRef), built once.

    Random official-width weights (fixed seeds; decoder alpha = DECODER_ALPHA), both in eval mode (the
    feature net's BatchNorm still uses batch statistics)."""
    feats = cine_features.randomize_(cine_features.ResUNetRef(), seed=2).eval()
    dec = cine_decoder.randomize_(cine_decoder.ImgDecoderRef(), seed=3, alpha=DECODER_ALPHA).eval()
    d = _tempdir("cine-model-")
    src = save_model(f"{d}/model_150000.pth", feats, dec)
    out = f"{d}/converted"
    convert(src, out)
    return d, src, out, feats, dec


@functools.cache
def small_sceneflow():
    """(sceneflow_model.pth path, SceneFlowEstimatorRef) of a narrow random motion net (8 filters, SPADE
    hidden 16), saved before any forward pass (PyTorch's train-mode spectral-norm hook updates u, v)."""
    torch.manual_seed(0)
    ref = cine_motion.randomize_(cine_motion.SceneFlowEstimatorRef(div_flow=1.0, nf=8, hidden=16), seed=1)
    d = _tempdir("cine-sceneflow-")
    return save_sceneflow(f"{d}/sceneflow_model.pth", ref), ref
