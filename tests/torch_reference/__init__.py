"""PyTorch reference modules written from the official facts (shared/reference/cinemagraphy.md and the
official source read for facts), with the official state-dict key names and shapes. Test-only: nothing in
cine_jax / kernels / configs imports this package, and it imports torch at module level.

cine_motion    SPADEUnet4MaskMotion inside the SPADEUnetMaskMotion wrapper (key prefix motion_predictor.),
               plus the demo.py pre-processing and renderer post-processing of the flow.
cine_features  ResUNet (the feature net of model_*.pth['feature_net']).
cine_decoder   ImgDecoder (model_*.pth['img_decoder']) with its learned-alpha blend.
cine_files     random references written in the official file layouts (built once per test process).
"""

import contextlib

import torch


@contextlib.contextmanager
def torch_threads(n=1):
    """Run PyTorch with n intra-op threads, restoring the previous setting afterwards. The references run
    tiny inputs; on a small shared machine OpenMP spin-waiting next to XLA's thread pool costs ~30x in CPU
    time (measured: 4.3 s vs 0.14 s for four small ResUNet forwards with 2 threads vs 1)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
