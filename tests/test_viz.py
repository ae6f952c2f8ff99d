"""Tests of cine_jax.viz against closed forms, colorsys (HSV) and cv2.applyColorMap."""

import colorsys

import cv2
import numpy as np
import pytest

from cine_jax import viz
from cine_jax.io import Hint


def test_flow_to_color_zero_is_white_and_matches_hsv(rng):
    flow = rng.standard_normal((6, 7, 2)).astype(np.float32)
    flow[0, 0] = 0.0
    max_mag = 2.0
    rgb = viz.flow_to_color(flow, max_mag=max_mag)
    assert rgb.shape == (6, 7, 3) and rgb.dtype == np.float32
    np.testing.assert_allclose(rgb[0, 0], [1.0, 1.0, 1.0], atol=1e-6)  # zero flow is white
    for i in range(6):
        for j in range(7):
            dx, dy = flow[i, j]
            hue = (np.degrees(np.arctan2(dy, dx)) % 360.0) / 360.0
            sat = min(np.hypot(dx, dy) / max_mag, 1.0)
            np.testing.assert_allclose(rgb[i, j], colorsys.hsv_to_rgb(hue, sat, 1.0), atol=1e-5)


def test_flow_to_color_directions_and_complements(rng):
    flow = np.array([[[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]]], np.float32)
    rgb = viz.flow_to_color(flow)
    np.testing.assert_allclose(rgb[0, 0], [1.0, 0.0, 0.0], atol=1e-6)  # right: red, hue 0
    np.testing.assert_allclose(rgb[0, 1], [0.5, 1.0, 0.0], atol=1e-6)  # down (y down): hue 90
    np.testing.assert_allclose(rgb[0, 2], [0.0, 1.0, 1.0], atol=1e-6)  # left: cyan, hue 180
    np.testing.assert_allclose(rgb[0, 3], [0.5, 0.0, 1.0], atol=1e-6)  # up: hue 270
    # Opposite vectors at full saturation have complementary colours: c(v) + c(-v) = 1.
    ang = rng.uniform(0, 2 * np.pi, 50)
    v = np.stack([np.cos(ang), np.sin(ang)], -1).astype(np.float32)[None] * 3.0
    both = viz.flow_to_color(np.concatenate([v, -v], 0))
    np.testing.assert_allclose(both[0] + both[1], 1.0, atol=1e-5)
    # Magnitudes beyond max_mag saturate; non-finite vectors are black.
    bad = np.array([[[np.nan, 0.0], [10.0, 0.0]]], np.float32)
    out = viz.flow_to_color(bad, max_mag=1.0)
    np.testing.assert_array_equal(out[0, 0], [0.0, 0.0, 0.0])
    np.testing.assert_allclose(out[0, 1], [1.0, 0.0, 0.0], atol=1e-6)


def test_depth_to_color_near_is_bright():
    depth = np.array([[1.0, 2.0, 4.0], [8.0, 0.0, np.inf]], np.float32)
    rgb = viz.depth_to_color(depth)
    lo, hi = 1 / 8.0, 1.0
    expected_u8 = np.round((np.array([1.0, 0.5, 0.25, 0.125]) - lo) / (hi - lo) * 255).astype(np.uint8)
    ref = cv2.applyColorMap(expected_u8[None], cv2.COLORMAP_INFERNO)[0, :, ::-1] / 255.0
    np.testing.assert_allclose(rgb.reshape(-1, 3)[:4], ref, atol=1e-6)
    luma = rgb.reshape(-1, 3)[:4] @ np.array([0.299, 0.587, 0.114])
    assert np.all(np.diff(luma) < 0)  # brightness falls with depth
    np.testing.assert_array_equal(rgb[1, 1:], 0.0)  # invalid depth (0, inf) is black
    masked = viz.depth_to_color(depth, mask=np.array([[1, 0, 1], [1, 1, 1]], np.float32))
    np.testing.assert_array_equal(masked[0, 1], 0.0)


def test_checkerboard_rgba_closed_form():
    rgba = np.zeros((16, 16, 4), np.float32)
    rgba[..., :3] = (0.2, 0.4, 1.0)
    rgba[:, :8, 3] = 1.0
    rgba[:, 8:, 3] = 0.5
    out = viz.checkerboard_rgba(rgba, square=4)
    np.testing.assert_allclose(out[:, :8], np.broadcast_to([0.2, 0.4, 1.0], (16, 8, 3)), atol=1e-6)
    board = np.where(((np.arange(16)[:, None] // 4) + (np.arange(16)[None] // 4)) % 2 == 0, 0.8, 0.6)
    exp = 0.5 * np.array([0.2, 0.4, 1.0]) + 0.5 * board[:, 8:, None]
    np.testing.assert_allclose(out[:, 8:], exp, atol=1e-6)
    pre = viz.checkerboard_rgba(rgba * np.array([1, 1, 1, 0], np.float32), square=4, premultiplied=True)
    np.testing.assert_allclose(pre[..., 0], rgba[..., 0] + board, atol=1e-6)


def test_contact_sheet_layout():
    tiles = [(f"tile {k}", np.full((10, 15, 3), k / 5.0, np.float32)) for k in range(5)]
    tiles[1] = ("gray", np.full((20, 30), 0.3, np.float32))
    tiles[2] = ("rgba", np.concatenate([np.ones((20, 30, 3)), np.ones((20, 30, 1))], -1))
    sheet = viz.contact_sheet(tiles, columns=3, tile_size=(20, 30), pad=4, title_height=12)
    rows, cols = 2, 3
    assert sheet.shape == (rows * (12 + 20) + (rows + 1) * 4, cols * 30 + (cols + 1) * 4, 3)
    # Tile 4 (row 1, column 1) is a 2x enlarged constant image filling its cell.
    y0, x0 = 4 + 1 * (32 + 4) + 12, 4 + 1 * (30 + 4)
    np.testing.assert_allclose(sheet[y0 : y0 + 20, x0 : x0 + 30], 0.8, atol=1e-6)
    np.testing.assert_allclose(sheet[4 + 12 : 4 + 32, 38:68], 0.3, atol=1e-6)  # grayscale tile
    # Titles are drawn: dark pixels in the first title band, none in the padding.
    assert sheet[4 : 4 + 12, 4:34].min() < 0.5
    np.testing.assert_allclose(sheet[:4], 1.0)
    # A single tile gives a one-cell sheet; an empty list is an error.
    assert viz.contact_sheet(tiles[:1], columns=4, tile_size=16, pad=0, title_height=0).shape == (16, 16, 3)
    with pytest.raises(ValueError):
        viz.contact_sheet([])


def test_draw_hints_mask_tint_and_arrows():
    image = np.full((40, 60, 3), 0.5, np.float32)
    mask = np.zeros((40, 60), np.float32)
    mask[5:35, 30:58] = 1.0
    hints = [Hint(start=(35.0, 20.0), end=(52.0, 20.0), vector=(0.34, 0.0))]
    out = viz.draw_hints(image, hints, mask, mask_color=(0.0, 0.8, 1.0), mask_opacity=0.4, thickness=1)
    assert out.shape == (40, 60, 3)
    np.testing.assert_array_equal(out[:, :25], 0.5)  # untouched away from the mask and arrows
    np.testing.assert_allclose(out[30, 40], 0.5 * 0.6 + np.array([0.0, 0.8, 1.0]) * 0.4, atol=1e-6)
    assert out[20, 44, 0] > 0.8 and out[20, 44, 1] < 0.3  # red arrow shaft on the hint line
    # Plain [[x0, y0], [x1, y1]] hints and no mask.
    out2 = viz.draw_hints(image, [[[5, 10], [20, 10]]], None, thickness=1)
    assert out2[10, 12, 0] > 0.8 and out2[10, 12, 2] < 0.3
    np.testing.assert_array_equal(out2[30:], 0.5)
