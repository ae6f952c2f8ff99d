"""PyTorch reference of the 3D Cinemagraphy feature net ResUNet (test-only).

Written from shared/reference/cinemagraphy.md sections 3 and 10 and the official module layout: a
ResNet-34-style encoder (stages 1-3) with reflect-padded bias-free convs and BatchNorm2d
(track_running_stats=False, so batch statistics even in eval mode), and a decoder of
bilinear(align_corners=True) upsampling + conv/BN/ELU blocks whose skip inputs are zero-padded with F.pad
to the upsampled size. Attribute names reproduce the official state-dict keys.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F


def _bn(c):
    return nn.BatchNorm2d(c, track_running_stats=False, affine=True)


class BlockRef(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False, padding_mode="reflect")
        self.bn1 = _bn(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False, padding_mode="reflect")
        self.bn2 = _bn(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), _bn(cout))

    def forward(self, x):
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        skip = x if self.downsample is None else self.downsample(x)
        return F.relu(out + skip)


class ConvBlockRef(nn.Module):
    """conv (bias, reflect) -> BN -> ELU; attribute names conv, bn."""

    def __init__(self, cin, cout, k):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, 1, (k - 1) // 2, padding_mode="reflect")
        self.bn = _bn(cout)

    def forward(self, x):
        return F.elu(self.bn(self.conv(x)))


class UpConvRef(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.conv = ConvBlockRef(cin, cout, 3)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True))


def _skip(skip, up):
    """Zero-pad (F.pad, constant) the skip to the upsampled map's size, then cat[up, skip]."""
    dy = up.shape[2] - skip.shape[2]
    dx = up.shape[3] - skip.shape[3]
    skip = F.pad(skip, (dx // 2, dx - dx // 2, dy // 2, dy - dy // 2))
    return torch.cat([up, skip], dim=1)


class ResUNetRef(nn.Module):
    def __init__(self, in_ch=4, out_ch=32):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, 64, 7, 2, 3, bias=False, padding_mode="reflect")
        self.bn1 = _bn(64)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = nn.Sequential(*[BlockRef(64, 64, 1) for _ in range(3)])
        self.layer2 = nn.Sequential(BlockRef(64, 128, 2), *[BlockRef(128, 128, 1) for _ in range(3)])
        self.layer3 = nn.Sequential(BlockRef(128, 256, 2), *[BlockRef(256, 256, 1) for _ in range(5)])
        self.upconv3 = UpConvRef(256, 128)
        self.iconv3 = ConvBlockRef(256, 128, 3)
        self.upconv2 = UpConvRef(128, 64)
        self.iconv2 = ConvBlockRef(128, out_ch, 3)
        self.out_conv = nn.Conv2d(out_ch, out_ch, 1, 1)

    def forward(self, x):
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        x1 = self.layer1(x)
        x2 = self.layer2(x1)
        x3 = self.layer3(x2)
        x = self.iconv3(_skip(x2, self.upconv3(x3)))
        x = self.iconv2(_skip(x1, self.upconv2(x)))
        return self.out_conv(x)


def randomize_(model, seed=0):
    """Random conv weights (He scale) and random BN affine parameters (the defaults 1/0 would hide swaps)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 4:
                p.copy_(torch.randn(p.shape, generator=g) * (2.0 / p[0].numel()) ** 0.5)
            elif name.endswith("weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return model
