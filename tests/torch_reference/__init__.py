"""PyTorch reference modules written from the official facts (shared/reference/cinemagraphy.md and the
official source read for facts), with the official state-dict key names and shapes. Test-only: nothing in
cine_jax / kernels / configs imports this package, and it imports torch at module level.

cine_motion    SPADEUnet4MaskMotion inside the SPADEUnetMaskMotion wrapper (key prefix motion_predictor.),
               plus the demo.py pre-processing and renderer post-processing of the flow.
cine_features  ResUNet (the feature net of model_*.pth['feature_net']).
cine_decoder   ImgDecoder (model_*.pth['img_decoder']) with its learned-alpha blend.
"""
