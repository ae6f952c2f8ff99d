"""The simplest 3D cinemagraph renderer, as a yardstick for the pipeline on scenes with known answers.

`zbuffer_cinemagraph` is plain NumPy and shares no code with the pipeline: every input pixel is one
point; it moves by official-style Euler steps with rounded positions (x_k = x_{k-1} + M(round(x_{k-1})),
a point leaving the image is dropped); it keeps its source z-depth (as the official lifting); it is
projected into the target camera and written to the NEAREST pixel, the nearest depth winning
(z-buffer). Forward (M, t steps) and backward (-M, N - t steps) renders are blended with paper Eq. 4
(weight (1 - t/N) a_f e^{-D_f} against (t/N) a_b e^{-D_b}, a = 1 where a point landed, D = depth in units
of the nearest input depth). No layers, no inpainting: pixels no point reached take the colour of the
nearest covered pixel.
"""

import numpy as np
import scipy.ndimage


def _euler_rounded(flow, steps):
    """Positions [steps + 1, H*W, 2] (u, v) and validity [steps + 1, H*W] of every pixel under rounded
    Euler steps of `flow` [H, W, 2]."""
    h, w = flow.shape[:2]
    v, u = np.mgrid[0:h, 0:w]
    pos = np.stack([u.ravel(), v.ravel()], -1).astype(np.float64)
    ok = np.ones(h * w, bool)
    out, valid = [pos.copy()], [ok.copy()]
    for _ in range(steps):
        iu = np.clip(np.round(pos[:, 0]).astype(int), 0, w - 1)
        iv = np.clip(np.round(pos[:, 1]).astype(int), 0, h - 1)
        pos = np.where(ok[:, None], pos + flow[iv, iu], pos)
        ok &= (np.round(pos[:, 0]) >= 0) & (np.round(pos[:, 0]) <= w - 1)
        ok &= (np.round(pos[:, 1]) >= 0) & (np.round(pos[:, 1]) <= h - 1)
        out.append(pos.copy())
        valid.append(ok.copy())
    return np.stack(out), np.stack(valid)


def _zbuffer(pos, ok, z_src, colors, K_src, pose, K, size):
    """Nearest-pixel z-buffer of the points at source-view positions pos [P, 2] with depth z_src [P]."""
    h, w = size
    x = (pos[:, 0] - K_src[0, 2]) / K_src[0, 0] * z_src
    y = (pos[:, 1] - K_src[1, 2]) / K_src[1, 1] * z_src
    X = np.stack([x, y, z_src], -1) @ pose[:3, :3].T + pose[:3, 3]
    z = X[:, 2]
    keep = ok & (z > 1e-6)
    zs = np.where(keep, z, 1.0)
    ui = np.round(K[0, 0] * X[:, 0] / zs + K[0, 2])
    vi = np.round(K[1, 1] * X[:, 1] / zs + K[1, 2])
    keep &= (ui >= 0) & (ui <= w - 1) & (vi >= 0) & (vi <= h - 1)
    idx = (vi * w + ui).astype(np.int64)[keep]
    zk = z[keep]
    zbuf = np.full(h * w, np.inf)
    np.minimum.at(zbuf, idx, zk)
    win = zk == zbuf[idx]
    img = np.zeros((h * w, 3))
    img[idx[win]] = colors[keep][win]
    return img.reshape(h, w, 3), np.where(np.isfinite(zbuf), zbuf, 0.0).reshape(h, w), np.isfinite(zbuf).reshape(h, w)


def zbuffer_cinemagraph(image, depth, flow, K_src, poses, Ks):
    """Frames [N, H, W, 3] float32 of an N-frame loop (N = len(poses)) seen from poses [N, 4, 4]
    (world-to-camera, world = the source camera) with intrinsics Ks [N, 3, 3] (or one [3, 3]).

    image [H, W, 3], depth [H, W] z-depth, flow [H, W, 2] Eulerian flow (px/frame), K_src [3, 3] of the
    photo; depth and poses in the same units."""
    image = np.asarray(image, np.float64)
    depth = np.asarray(depth, np.float64)
    flow = np.asarray(flow, np.float64)
    K_src = np.asarray(K_src, np.float64)
    poses = np.asarray(poses, np.float64)
    n = len(poses)
    Ks = np.broadcast_to(np.asarray(Ks, np.float64), (n, 3, 3))
    h, w = depth.shape
    colors = image.reshape(-1, 3)
    fwd, fok = _euler_rounded(flow, n)
    bwd, bok = _euler_rounded(-flow, n)
    # the point keeps the depth of its source pixel
    z_src = depth.reshape(-1)
    near = depth.min()
    frames = []
    for t in range(n):
        tw = t / n
        img_f, d_f, a_f = _zbuffer(fwd[t], fok[t], z_src, colors, K_src, poses[t], Ks[t], (h, w))
        img_b, d_b, a_b = _zbuffer(bwd[n - t], bok[n - t], z_src, colors, K_src, poses[t], Ks[t], (h, w))
        m = np.minimum(np.where(a_f, d_f, np.inf), np.where(a_b, d_b, np.inf))
        m = np.where(np.isfinite(m), m, 0.0)
        wf = (1 - tw) * a_f * np.exp(-(d_f - m) / near)
        wb = tw * a_b * np.exp(-(d_b - m) / near)
        tot = wf + wb
        covered = tot > 0
        W = np.where(covered, wf / np.where(covered, tot, 1.0), 0.0)
        img = W[..., None] * img_f + (1 - W[..., None]) * img_b
        if not covered.all() and covered.any():
            _, (ii, jj) = scipy.ndimage.distance_transform_edt(~covered, return_indices=True)
            img = img[ii, jj]
        frames.append(img)
    return np.clip(np.stack(frames), 0.0, 1.0).astype(np.float32)
