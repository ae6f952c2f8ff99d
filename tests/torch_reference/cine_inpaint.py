"""PyTorch reference of the 3D-Photo partial-convolution U-Nets, written from the official facts.

Module and state-dict names follow vt-vl-lab/3d-photo-inpainting networks.py / xingyi-li/3d-cinemagraphy
lib/model/inpaint/networks/inpainting_nets.py (shared/reference/cinemagraphy.md sections 2 and 10):
`enc_k` / `dec_k` (colour net `dec_5A..dec_1A`) each hold `conv.input_conv`, `conv.mask_conv` (all-ones
kernel) and, except enc_1 and the last decoder, `bn` (BatchNorm2d, eval mode). The partial convolution here
convolves the full per-channel mask with the all-ones mask kernel, as the official code does; cine_jax uses
a per-pixel count instead, so the two are independent computations of the same thing.
Used by tests only (imports torch).
"""

import torch
import torch.nn.functional as F
from torch import nn

WIDTHS = (64, 128, 256, 512, 512, 512, 512)
ENC_KERNELS = (7, 5, 5, 3, 3, 3, 3)


class PartialConv(nn.Module):
    def __init__(self, cin, cout, k, stride, bias):
        super().__init__()
        pad = (k - 1) // 2
        self.input_conv = nn.Conv2d(cin, cout, k, stride, pad, bias=bias)
        self.mask_conv = nn.Conv2d(cin, cout, k, stride, pad, bias=False)
        nn.init.constant_(self.mask_conv.weight, 1.0)
        self.mask_conv.weight.requires_grad_(False)
        self.window = cin * k * k

    def forward(self, x, mask):
        conv = self.input_conv(x * mask)
        b = self.input_conv.bias.view(1, -1, 1, 1) if self.input_conv.bias is not None else 0.0
        with torch.no_grad():
            msum = self.mask_conv(mask)
        empty = msum == 0
        scaled = (conv - b) * self.window / torch.where(empty, torch.ones_like(msum), msum) + b
        out = torch.where(empty, torch.zeros_like(scaled), scaled)
        return out, (~empty).to(out.dtype)


class PCBActiv(nn.Module):
    def __init__(self, cin, cout, k, stride, bias, bn, activ):
        super().__init__()
        self.conv = PartialConv(cin, cout, k, stride, bias)
        if bn:
            self.bn = nn.BatchNorm2d(cout)
        self.activ = activ

    def forward(self, x, mask):
        h, m = self.conv(x, mask)
        if hasattr(self, "bn"):
            h = self.bn(h)
        if self.activ == "relu":
            h = F.relu(h)
        elif self.activ == "leaky":
            h = F.leaky_relu(h, 0.2)
        return h, m


class PartialConvUNetRef(nn.Module):
    """kind "depth": 4 -> 1, biases on enc_1, enc_2, dec_1; kind "color": 6 -> 3 sigmoid, bias on dec_1A.
    `widths` defaults to the official encoder widths; smaller ones keep the layout for fast tests."""

    def __init__(self, kind, widths=WIDTHS):
        super().__init__()
        self.widths = widths
        depth = kind == "depth"
        self.cin, self.cout = (4, 1) if depth else (6, 3)
        self.dec_names = ["dec_7", "dec_6"] + [f"dec_{i}" + ("" if depth else "A") for i in range(5, 0, -1)]
        self.sigmoid = not depth
        cin = self.cin
        for i, (w, k) in enumerate(zip(widths, ENC_KERNELS)):
            bias = depth and i < 2
            setattr(self, f"enc_{i + 1}", PCBActiv(cin, w, k, 2, bias, i > 0, "relu"))
            cin = w
        for j, level in enumerate(range(7, 0, -1)):
            last = level == 1
            skip = self.cin if last else widths[level - 2]
            out = self.cout if last else widths[level - 2]
            setattr(self, self.dec_names[j], PCBActiv(widths[level - 1] + skip, out, 3, 1, last, not last,
                                                      None if last else "leaky"))

    def forward(self, x):
        mask = (x[:, -2:-1] + x[:, -1:]).clamp(0, 1).repeat(1, x.shape[1], 1, 1)
        feats, masks = [x], [mask]
        h, m = x, mask
        for i in range(7):
            h, m = getattr(self, f"enc_{i + 1}")(h, m)
            feats.append(h)
            masks.append(m)
        for j, level in enumerate(range(7, 0, -1)):
            h = F.interpolate(h, scale_factor=2, mode="nearest")
            m = F.interpolate(m, scale_factor=2, mode="nearest")
            h, m = getattr(self, self.dec_names[j])(torch.cat([h, feats[level - 1]], 1),
                                                    torch.cat([m, masks[level - 1]], 1))
        return torch.sigmoid(h) if self.sigmoid else h

    def forward_3p(self, x, unit=128):
        """Centred zero padding to a multiple of `unit`, forward, crop (official forward_3P)."""
        n, c, h, w = x.shape
        ph, pw = -(-h // unit) * unit, -(-w // unit) * unit
        top, left = (ph - h) // 2, (pw - w) // 2
        big = torch.zeros(n, c, ph, pw, dtype=x.dtype)
        big[..., top:top + h, left:left + w] = x
        return self.forward(big)[..., top:top + h, left:left + w]


def randomize_(model, seed):
    """Random weights with O(1) activations through the depth of the net, random BN running statistics."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("mask_conv.weight"):
                continue
            if p.ndim == 4:
                fan_in = p.shape[1] * p.shape[2] * p.shape[3]
                p.copy_(torch.randn(p.shape, generator=g) * (1.0 / fan_in) ** 0.5)
            elif name.endswith("bn.weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(0.1 * torch.randn(b.shape, generator=g))
            elif name.endswith("running_var"):
                b.copy_(0.5 + torch.rand(b.shape, generator=g))
            elif name.endswith("num_batches_tracked"):
                b.fill_(1000)
    return model.eval()
