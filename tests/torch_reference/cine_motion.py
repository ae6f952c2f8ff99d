"""PyTorch reference of the 3D Cinemagraphy motion estimator, its pre- and post-processing (test-only).

Written from the facts in shared/reference/cinemagraphy.md sections 1 and 10: an 8-level U-Net of
spectral-norm convs (torch.nn.utils.spectral_norm, so the spectral norm and its power iteration are
PyTorch's own), SPADE blocks over InstanceNorm2d conditioned on the 6-channel input resized with
F.interpolate, and the channel-3 nearest upsampling quirk. Module attribute names reproduce the official
state-dict keys (`motion_predictor.conv1.weight_orig`, `...spade_layer8_0.mlp_shared.0.weight`, ...).
"""

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image


def _sn_conv(cin, cout, k, stride, pad):
    return nn.utils.spectral_norm(nn.Conv2d(cin, cout, kernel_size=k, stride=stride, padding=pad, bias=True))


def _resize_seg(seg, size):
    """RGB bilinear, mask nearest, hints bilinear (align_corners=False)."""
    return torch.cat(
        [
            F.interpolate(seg[:, 0:3], size=size, mode="bilinear", align_corners=False),
            F.interpolate(seg[:, 3:4], size=size, mode="nearest"),
            F.interpolate(seg[:, 4:6], size=size, mode="bilinear", align_corners=False),
        ],
        dim=1,
    )


class SpadeRef(nn.Module):
    def __init__(self, channels, label_nc=6, hidden=128):
        super().__init__()
        self.param_free_norm = nn.InstanceNorm2d(channels)
        self.mlp_shared = nn.Sequential(nn.Conv2d(label_nc, hidden, 3, padding=1), nn.ReLU())
        self.mlp_gamma = nn.Conv2d(hidden, channels, 3, padding=1)
        self.mlp_beta = nn.Conv2d(hidden, channels, 3, padding=1)

    def forward(self, x, seg):
        actv = self.mlp_shared(_resize_seg(seg, x.shape[-2:]))
        return self.param_free_norm(x) * (1 + self.mlp_gamma(actv)) + self.mlp_beta(actv)


def up_split(x):
    """x2: channels 0-2 and 4+ bilinear (align_corners=False), channel 3 nearest."""
    bil = lambda t: F.interpolate(t, scale_factor=2, mode="bilinear", align_corners=False)
    near = F.interpolate(x[:, 3:4], scale_factor=2, mode="nearest")
    return torch.cat([bil(x[:, :3]), near, bil(x[:, 4:])], dim=1)


class MotionUNetRef(nn.Module):
    """SPADEUnet4MaskMotion(num_filters=32, channels_in=6, channels_out=2); nf and the SPADE hidden width
    (official 128, hard-coded there) are arguments only so tests can run a narrow copy."""

    def __init__(self, nf=32, cin=6, cout=2, hidden=128):
        super().__init__()
        enc = [cin, nf, 2 * nf, 4 * nf, 8 * nf, 8 * nf, 8 * nf, 8 * nf, 8 * nf]
        for i in range(1, 9):
            setattr(self, f"conv{i}", _sn_conv(enc[i - 1], enc[i], 4, 2, 1))
        dec_in = [8 * nf, 16 * nf, 16 * nf, 16 * nf, 16 * nf, 8 * nf, 4 * nf, 2 * nf]
        dec_out = [8 * nf, 8 * nf, 8 * nf, 8 * nf, 4 * nf, 2 * nf, nf, cout]
        for i in range(1, 9):
            setattr(self, f"dconv{i}", _sn_conv(dec_in[i - 1], dec_out[i - 1], 3, 1, 1))
        self.spade_layer = SpadeRef(nf, cin, hidden)
        for name, c in [("2_0", 2), ("2_1", 2), ("4_0", 4), ("4_1", 4)] + [(f"8_{i}", 8) for i in range(8)]:
            setattr(self, f"spade_layer{name}", SpadeRef(c * nf, cin, hidden))

    def forward(self, inp):
        lrelu = lambda t: F.leaky_relu(t, 0.2)
        e1 = self.conv1(inp)
        e2 = self.spade_layer2_0(self.conv2(lrelu(e1)), inp)
        e3 = self.spade_layer4_0(self.conv3(lrelu(e2)), inp)
        e4 = self.spade_layer8_0(self.conv4(lrelu(e3)), inp)
        e5 = self.spade_layer8_1(self.conv5(lrelu(e4)), inp)
        e6 = self.spade_layer8_2(self.conv6(lrelu(e5)), inp)
        e7 = self.spade_layer8_3(self.conv7(lrelu(e6)), inp)
        e8 = self.conv8(lrelu(e7))
        d = up_split(F.relu(e8))
        stages = [
            (self.dconv1, self.spade_layer8_4, e7),
            (self.dconv2, self.spade_layer8_5, e6),
            (self.dconv3, self.spade_layer8_6, e5),
            (self.dconv4, self.spade_layer8_7, e4),
            (self.dconv5, self.spade_layer4_1, e3),
            (self.dconv6, self.spade_layer2_1, e2),
            (self.dconv7, self.spade_layer, e1),
        ]
        for dconv, spade, skip in stages:
            d_ = spade(dconv(d), inp)
            d = F.relu(torch.cat([up_split(d_), up_split(skip)], dim=1))
        return self.dconv8(d)


class SceneFlowEstimatorRef(nn.Module):
    """The SPADEUnetMaskMotion wrapper: state-dict keys are motion_predictor.*; forward_flow as official."""

    def __init__(self, div_flow=1.0, nf=32, hidden=128):
        super().__init__()
        self.div_flow = div_flow
        self.motion_predictor = MotionUNetRef(nf=nf, hidden=hidden)

    def forward_flow(self, image, mask, hint):
        return self.motion_predictor(torch.cat([image, mask, hint], dim=1)) * self.div_flow


def randomize_(model, seed=0):
    """Random weights everywhere, and random (non-converged) spectral-norm vectors u, v, so that one power
    iteration changes the result noticeably."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("weight_orig"):
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g) * (2.0 / fan_in) ** 0.5)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
        for name, b in model.named_buffers():
            if name.endswith(("weight_u", "weight_v")):
                r = torch.randn(b.shape, generator=g)
                b.copy_(r / r.norm())
    return model


# --- demo.py pre-processing and renderer post-processing, in torch -------------------------------------


def official_inputs(image_u8, mask, starts, vectors, sigma, size):
    """(image [1,3,S,S] in [-1,1], mask [1,1,S,S], hint [1,2,S,S]) as demo.py builds them."""
    img = Image.fromarray(image_u8).resize((size, size), Image.BICUBIC)
    image = torch.from_numpy(np.asarray(img, np.float32) / 255.0).permute(2, 0, 1)[None] * 2 - 1
    height, width = mask.shape
    xs = torch.linspace(0, width - 1, width).view(1, 1, width).repeat(1, height, 1)
    ys = torch.linspace(0, height - 1, height).view(1, height, 1).repeat(1, 1, width)
    xys = torch.cat((xs, ys), 1).view(2, -1)
    dense = torch.zeros(1, 2, height * width)
    norm = torch.zeros(1, 2, height * width)
    motion = torch.tensor(np.asarray(vectors, np.float64)).permute(1, 0)[None]
    for k, (x0, y0) in enumerate(np.asarray(starts)):
        xi, yi = int(x0), int(y0)
        dist = ((xys - xys.view(2, height, width)[:, yi, xi].unsqueeze(1)) ** 2).sum(0, True).sqrt()
        weight = (-((dist / sigma) ** 2)).exp().unsqueeze(0)
        dense += weight * motion[:, :, k].unsqueeze(2)
        norm += weight
    norm[norm == 0.0] = 1.0
    dense = (dense / norm).view(1, 2, height, width) * torch.tensor(mask).bool()
    hint = dense * torch.FloatTensor([size / width, size / height]).view(1, 2, 1, 1)
    hint = F.interpolate(hint, (size, size), mode="bilinear", align_corners=False)
    m = F.interpolate(torch.tensor(mask[None, None]).bool().float(), (size, size), mode="area")
    return image, m, hint


def official_postprocess(pred, mask, h, w, flow_scale=1.0, ksize=15):
    """renderer.compute_flow_and_inpaint after the network, then demo.py's / flow_scale; [1,2,h,w]."""
    flow = pred * mask
    box = torch.ones(2, 1, ksize, ksize) / (ksize * ksize)  # kornia box_blur, normalized, constant border
    flow = F.conv2d(flow, box, padding=ksize // 2, groups=2) * mask
    flow = flow * torch.FloatTensor([w / flow.shape[3], h / flow.shape[2]]).view(1, 2, 1, 1)
    return F.interpolate(flow, (h, w), mode="bilinear", align_corners=False) / flow_scale
