"""PyTorch reference of the 3D Cinemagraphy image decoder ImgDecoder and its learned blend (test-only).

Written from shared/reference/cinemagraphy.md sections 3, 5 and 10: a 4-level U-Net of
[conv3x3 reflect -> GroupNorm(C/32) -> PReLU] pairs, Up blocks that upsample bilinearly
(align_corners=True) and bring the result to the skip's size with F.pad(mode="reflect") exactly as the
official code calls it (negative padding in up1), and the blend with the learned scalar `alpha`.
Attribute names reproduce the official state-dict keys.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F


def _cgp(cin, cout):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, padding_mode="reflect"), nn.GroupNorm(cout // 32, cout),
                         nn.PReLU())


class DoubleConvRef(nn.Module):
    def __init__(self, cin, cout, mid=None):
        super().__init__()
        mid = mid or cout
        self.double_conv1 = _cgp(cin, mid)
        self.double_conv2 = _cgp(mid, cout)

    def forward(self, x):
        x1 = self.double_conv1(x)
        return x1, self.double_conv2(x1)


class DownRef(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.maxpool_conv = nn.Sequential(nn.MaxPool2d(2), DoubleConvRef(cin, cout))

    def forward(self, x):
        return self.maxpool_conv(x)


class ConcatDoubleConvRef(nn.Module):
    def __init__(self, cin, cout, mid):
        super().__init__()
        self.double_conv1 = _cgp(cin, mid)
        self.double_conv2 = _cgp(2 * mid, cout)

    def forward(self, x, xc):
        return self.double_conv2(torch.cat([xc, self.double_conv1(x)], dim=1))


class UpRef(nn.Module):
    def __init__(self, cin, cout, mid):
        super().__init__()
        self.conv = ConcatDoubleConvRef(cin, cout, mid)

    def forward(self, x, xc1, xc2):
        x1 = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        dy = xc1.shape[2] - x1.shape[2]
        dx = xc1.shape[3] - x1.shape[3]
        x1 = F.pad(x1, [dx // 2, dx - dx // 2, dy // 2, dy - dy // 2], mode="reflect")
        return self.conv(torch.cat([xc1, x1], dim=1), xc2)


class OutConvRef(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, 1, 1, padding_mode="reflect")

    def forward(self, x, xc1):
        up = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        return torch.sigmoid(self.conv(torch.cat([xc1, up], dim=1)))


class ImgDecoderRef(nn.Module):
    def __init__(self, in_ch=37, out_ch=3):
        super().__init__()
        self.firstconv = nn.Conv2d(in_ch, 32, 7, 1, 3, bias=False)
        self.firstprelu = nn.PReLU()
        self.down1 = DownRef(32, 64)
        self.down2 = DownRef(64, 128)
        self.down3 = DownRef(128, 256)
        self.down4 = DownRef(256, 512)
        self.conv5 = DoubleConvRef(512, 512)
        self.up1 = UpRef(1024, 256, 512)
        self.up2 = UpRef(512, 128, 256)
        self.up3 = UpRef(256, 64, 128)
        self.up4 = UpRef(128, 32, 64)
        self.outc = OutConvRef(64, out_ch)
        self.alpha = nn.Parameter(torch.tensor(1.0))

    def blend(self, x0, x1, time):
        w0 = (1 - time) * torch.exp(self.alpha * x0[:, -1:]) * x0[:, 3:4]
        w1 = time * torch.exp(self.alpha * x1[:, -1:]) * x1[:, 3:4]
        total = torch.clamp(w0 + w1, min=1e-6)
        return (w0 / total) * x0 + (w1 / total) * x1

    def decode(self, x):
        x0 = self.firstprelu(self.firstconv(x))
        x20, x21 = self.down1(x0)
        x30, x31 = self.down2(x21)
        x40, x41 = self.down3(x31)
        x50, x51 = self.down4(x41)
        _, x61 = self.conv5(x51)
        xt1 = self.up1(x61, x51, x50)
        xt2 = self.up2(xt1, x41, x40)
        xt3 = self.up3(xt2, x31, x30)
        xt4 = self.up4(xt3, x21, x20)
        return self.outc(xt4, x0)

    def forward(self, x0, x1, time):
        return self.decode(self.blend(x0, x1, time))


def randomize_(model, seed=0, alpha=2.5):
    """Random conv weights (He scale), GroupNorm affine and PReLU slopes, and a non-default alpha."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 4:
                p.copy_(torch.randn(p.shape, generator=g) * (2.0 / p[0].numel()) ** 0.5)
            elif name == "alpha":
                p.fill_(alpha)
            elif name.endswith("2.weight") or name == "firstprelu.weight":  # PReLU slopes
                p.copy_(0.25 + 0.1 * torch.randn(p.shape, generator=g))
            elif name.endswith("1.weight"):  # GroupNorm scale
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return model
