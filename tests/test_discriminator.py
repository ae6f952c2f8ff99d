"""cine_jax/train/discriminator.py and losses.py against independent references.

The discriminator is checked against a PyTorch module written here from SPADE's facts (NLayerDiscriminator
with norm_D "spectralinstance": torch.nn.utils.spectral_norm + InstanceNorm2d(affine=False), kernel 4,
padding 2, LeakyReLU 0.2; MultiscaleDiscriminator downsampling with avg_pool2d 3x3 stride 2 padding 1,
count_include_pad=False), with the same weights through its state dict (SPADE's key names) at an odd input
size. Tolerance: max |diff| <= 1e-4 x max |torch| per feature map (float32).
"""

import numpy as np
import pytest

from cine_jax.train import losses

TOL = 1e-4


def _torch_discriminator(in_nc, ndf, n_layers, num_d):
    import torch
    from torch import nn
    from torch.nn.utils import spectral_norm

    class NLayer(nn.Module):
        def __init__(self):
            super().__init__()
            seq = [[nn.Conv2d(in_nc, ndf, 4, stride=2, padding=2), nn.LeakyReLU(0.2, False)]]
            nf = ndf
            for _ in range(1, n_layers):
                prev, nf = nf, min(nf * 2, 512)
                conv = spectral_norm(nn.Conv2d(prev, nf, 4, stride=2, padding=2, bias=False))
                seq += [[nn.Sequential(conv, nn.InstanceNorm2d(nf, affine=False)), nn.LeakyReLU(0.2, False)]]
            seq += [[nn.Conv2d(nf, 1, 4, stride=1, padding=2)]]
            for n, s in enumerate(seq):
                self.add_module(f"model{n}", nn.Sequential(*s))

        def forward(self, x):
            res = [x]
            for m in self.children():
                res.append(m(res[-1]))
            return res[1:]

    class Multiscale(nn.Module):
        def __init__(self):
            super().__init__()
            for i in range(num_d):
                self.add_module(f"discriminator_{i}", NLayer())

        def forward(self, x):
            out = []
            for d in self.children():
                out.append(d(x))
                x = torch.nn.functional.avg_pool2d(x, 3, stride=2, padding=[1, 1], count_include_pad=False)
            return out

    return Multiscale()


def _ours_from_torch(tnet, in_nc, ndf, n_layers, num_d):
    from cine_jax.nets import checkpoints as ck
    from cine_jax.train.discriminator import MultiscaleDiscriminator

    module = MultiscaleDiscriminator(num_d=num_d, ndf=ndf, n_layers=n_layers, in_channels=in_nc)
    sd = {k: v.detach().numpy().copy() for k, v in tnet.state_dict().items()}  # torch updates u in place
    variables = ck.variables_from_state_dict(sd, ck.variable_template(module), "torch reference")
    return module, variables, sd


def _compare(ours, theirs):
    assert len(ours) == len(theirs)
    for a_scale, b_scale in zip(ours, theirs):
        assert len(a_scale) == len(b_scale)
        for a, b in zip(a_scale, b_scale):
            b = b.detach().numpy().transpose(0, 2, 3, 1)
            assert a.shape == b.shape
            err = np.max(np.abs(np.asarray(a) - b)) / np.max(np.abs(b))
            assert err <= TOL, err


def test_multiscale_discriminator_matches_torch_over_two_training_steps():
    import jax
    import torch

    from cine_jax.train.discriminator import power_iterate

    torch.manual_seed(0)
    in_nc, ndf, n_layers, num_d = 5, 8, 4, 2
    tnet = _torch_discriminator(in_nc, ndf, n_layers, num_d)
    tnet.train()  # training-mode spectral norm: one power iteration per forward, u stored
    module, variables, sd0 = _ours_from_torch(tnet, in_nc, ndf, n_layers, num_d)
    assert "discriminator_0.model1.0.0.weight_orig" in sd0 and "discriminator_1.model0.0.bias" in sd0
    assert "discriminator_0.model1.0.0.bias" not in sd0  # spectralinstance drops the conv bias
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 45, 37, in_nc)).astype(np.float32)  # odd size: padding and count_include_pad
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    apply = jax.jit(module.apply)
    spectral = variables["spectral"]
    for _ in range(2):  # two steps: the u torch stores after step 1 is what our step 2 starts from
        with torch.no_grad():
            theirs = tnet(xt)
        ours = apply({"params": variables["params"], "spectral": spectral}, x)
        _compare(ours, theirs)
        spectral = power_iterate(variables["params"], spectral)
        u_t = tnet.discriminator_1.model2[0][0].weight_u.detach().numpy()
        u_o = np.asarray(spectral["discriminator_1"]["model2"]["0"]["0"]["weight_u"])
        np.testing.assert_allclose(u_o, u_t, rtol=1e-4, atol=1e-6)


def test_discriminator_shapes_and_paper_widths():
    import jax

    from cine_jax.train.discriminator import MultiscaleDiscriminator, num_params

    m = MultiscaleDiscriminator(num_d=2, ndf=64, n_layers=4, in_channels=8)
    shapes = jax.eval_shape(m.init, jax.random.key(0), np.zeros((1, 64, 64, 8), np.float32))
    p = shapes["params"]["discriminator_0"]
    assert p["model0"]["0"]["kernel"].shape == (4, 4, 8, 64)
    assert p["model3"]["0"]["0"]["weight_orig"].shape == (4, 4, 256, 512)
    assert p["model4"]["0"]["kernel"].shape == (4, 4, 512, 1)
    # 2 x (8*64*16 + 64 + 64*128*16 + 128*256*16 + 256*512*16 + 512*16 + 1) parameters
    per = 8 * 64 * 16 + 64 + 64 * 128 * 16 + 128 * 256 * 16 + 256 * 512 * 16 + 512 * 16 + 1
    assert num_params(shapes["params"]) == 2 * per


def _preds(rng, scales=2, layers=3):
    return [[rng.normal(size=(2, 5 - s, 4, 3 if k < layers - 1 else 1)).astype(np.float32) for k in range(layers)]
            for s in range(scales)]


def test_hinge_losses_brute_force(rng):
    real, fake = _preds(rng), _preds(rng)
    d = np.mean([np.mean(np.maximum(0, 1 - r[-1])) for r in real]) + np.mean(
        [np.mean(np.maximum(0, 1 + f[-1])) for f in fake])
    np.testing.assert_allclose(float(losses.hinge_d(real, fake)), d, rtol=1e-6)
    np.testing.assert_allclose(float(losses.hinge_g(fake)), np.mean([-np.mean(f[-1]) for f in fake]), rtol=1e-5)
    # closed form: constant predictions c give relu(1 - c) + relu(1 + c)
    const = [[np.full((1, 2, 2, 1), 0.5, np.float32)]]
    assert float(losses.hinge_d(const, const)) == pytest.approx(0.5 + 1.5)


def test_feature_matching_brute_force_and_real_is_constant(rng):
    import jax

    real, fake = _preds(rng), _preds(rng)
    ref = sum(np.mean(np.abs(f - r)) for fs, rs in zip(fake, real) for f, r in zip(fs[:-1], rs[:-1])) / len(fake)
    np.testing.assert_allclose(float(losses.feature_matching(fake, real)), ref, rtol=1e-6)
    g = jax.grad(lambda r: losses.feature_matching(fake, r))(real)
    assert all(float(np.abs(x).max()) == 0 for x in jax.tree.leaves(g))  # SPADE detaches the real features


def test_end_point_error_closed_form():
    pred = np.zeros((2, 3, 4, 2), np.float32)
    target = pred + np.array([3.0, 4.0], np.float32)
    assert float(losses.end_point_error(pred, target)) == pytest.approx(5.0, rel=1e-6)
    w = np.zeros((2, 3, 4), np.float32)
    w[0, 0, 0] = 1
    target2 = target.copy()
    target2[0, 0, 0] = [6.0, 8.0]
    assert float(losses.end_point_error(pred, target2, w)) == pytest.approx(10.0, rel=1e-6)
