"""four_d/priors/common.encode_frames (the frame-chunked, jax.checkpoint-ed VAE encode shared by the video and the
ControlNet priors) and the ControlNet prior's config key controlnet.vae_frames_per_chunk.

The chunk setting is a memory setting only (the official code encodes all frames in one call): these tests prove
that it changes neither the latents nor the gradients, against the diffusers PyTorch VAE (independent) and
between the chunked and the unchunked ControlNet SDS step.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
import priors_tiny as tiny  # noqa: E402

from configs.priors import get_config  # noqa: E402
from four_d.priors import common, loading  # noqa: E402
from four_d.priors import controlnet as cnm  # noqa: E402

TOL = 1e-4  # float32 JAX vs PyTorch, relative to the largest entry (as the other prior parity tests)
SAME = 1e-5  # chunked vs unchunked JAX: the same math, only the encoder's batch split differs


@pytest.fixture(scope="module")
def sd():
    return tiny.loaded_sd()


def _torch_encode(frames, eps, cotangent):
    """diffusers AutoencoderKL (PyTorch) of the same folder: scaled latents (mean + std eps) and the VJP of
    sum(latents * cotangent) w.r.t. the frames in [0, 1]."""
    vae = tiny.torch_sd(True)["vae"]
    x = torch.tensor(np.asarray(frames).transpose(0, 3, 1, 2), requires_grad=True)
    post = vae.encode(2 * x - 1).latent_dist
    z = (post.mean + post.std * torch.tensor(np.asarray(eps))) * vae.config.scaling_factor
    (z * torch.tensor(np.asarray(cotangent))).sum().backward()
    return z.detach().numpy(), x.grad.numpy().transpose(0, 2, 3, 1)


@pytest.mark.parametrize("chunk,query_chunk", [(1, 16), (2, 24), (4, 1024)])
def test_chunked_encode_matches_the_torch_vae(sd, rng, chunk, query_chunk):
    """4 frames encoded k at a time under jax.checkpoint, with the rematerialised ResNet blocks and the mid-block
    attention (8 x 8 = 64 tokens here) by blocks of query_chunk queries (16: 4 blocks; 24: padded to 72;
    1024: one block): latents and gradients of the PyTorch VAE (each frame alone, as official encode_imgs)
    within TOL."""
    model, params = sd
    frames = jnp.asarray(rng.uniform(size=(4, 64, 64, 3)).astype(np.float32))
    shape = common.latent_shape(model.vae, 4, 64)
    eps = jnp.asarray(rng.normal(size=shape).astype(np.float32))
    cot = jnp.asarray(rng.normal(size=shape).astype(np.float32))

    def f(x):
        return common.encode_frames(model.vae, params["vae"], x, eps, chunk, query_chunk=query_chunk)

    z, vjp = jax.vjp(f, frames)
    (g,) = vjp(cot)
    ref_z, ref_g = _torch_encode(frames, eps, cot)
    assert z.shape == shape
    assert tiny.rel_err(z, ref_z) <= TOL
    assert tiny.rel_err(g, ref_g) <= TOL


@pytest.mark.parametrize("query_chunk", [0, 5, 7, 64])
def test_chunked_attention_is_softmax_attention(rng, query_chunk):
    """chunked_attention against the softmax attention written in float64 NumPy, values and VJP (the VJP
    through jax.checkpoint + lax.map): 21 queries (5 and 7 pad the last block), 13 keys, 2 heads."""
    q, k, v, cot = (rng.normal(size=s_).astype(np.float32) for s_ in ((2, 2, 21, 4), (2, 2, 13, 4), (2, 2, 13, 3),
                                                                     (2, 2, 21, 3)))
    out, vjp = jax.vjp(lambda a, b, c: common.chunked_attention(a, b, c, query_chunk), q, k, v)
    gq, gk, gv = vjp(jnp.asarray(cot))
    s = np.einsum("bhqd,bhkd->bhqk", q.astype(np.float64), k.astype(np.float64))
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    ref = p @ v.astype(np.float64)
    dp = cot.astype(np.float64) @ np.swapaxes(v, -1, -2)  # closed-form backward of softmax attention
    ds = p * (dp - (dp * p).sum(-1, keepdims=True))
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(gq, ds @ k, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(gk, np.swapaxes(ds, -1, -2) @ q, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(gv, np.swapaxes(p, -1, -2) @ cot, rtol=1e-4, atol=1e-5)


def test_encode_frames_rejects_a_chunk_that_does_not_divide(sd):
    model, params = sd
    x = jnp.zeros((4, 64, 64, 3))
    with pytest.raises(ValueError, match=r"controlnet.vae_frames_per_chunk 3 must be 0 .* divide the 4 frames"):
        common.encode_frames(model.vae, params["vae"], x, None, 3, where="controlnet.vae_frames_per_chunk")
    with pytest.raises(ValueError, match="-1 must be 0"):
        common.encode_frames(model.vae, params["vae"], x, None, -1)


def test_controlnet_chunked_step_equals_unchunked(sd, rng):
    """controlnet.vae_frames_per_chunk 1 (paper variant) vs 0 (official): the same loss and the same gradient
    w.r.t. the rendered frames (relative SAME), the posterior sample drawn on (latent_sample True)."""
    sd_model, sd_params = sd
    cn, cn_params = loading.load_controlnet(tiny.controlnet_folder())
    model = cnm.ControlNetTile(sd_model, cn, tiny.controlnet_folder())
    params = dict(sd_params, controlnet=cn_params)
    emb = model.sd.prompt_embeddings(params, "a panda")
    frames = jnp.asarray(rng.uniform(size=(2, 40, 40, 3)).astype(np.float32))
    cond = jnp.asarray(rng.uniform(size=(2, 40, 40, 3)).astype(np.float32))
    out = []
    for chunk in (0, 1):
        cfg = get_config("tiny").controlnet
        cfg.vae_frames_per_chunk = chunk
        fn = cnm.make_controlnet_sds(model, cfg)
        cn_emb = model.controlnet_embeddings(params, cfg, prompt="pan")

        def loss(x, fn=fn, cn_emb=cn_emb):
            return fn.function.jitted(params, jax.random.key(3), x, cond, emb, jnp.zeros(2), cn_emb,
                                      jnp.asarray(False), fn.function.knobs())[0]

        out.append(jax.value_and_grad(loss)(frames))
    (l0, g0), (l1, g1) = out
    assert float(l0) > 0 and np.abs(np.asarray(g0)).max() > 0
    assert abs(float(l1) - float(l0)) <= SAME * abs(float(l0))
    assert tiny.rel_err(g1, g0) <= SAME


def test_paper_variant_uses_the_memory_settings():
    """--config paper encodes one frame at a time in both the video and the ControlNet prior (issue 11: every
    stage under 40 GB, benchmarks/stages_memory.py); the default stays the official one call."""
    paper, default = get_config("paper"), get_config()
    assert paper.controlnet.vae_frames_per_chunk == 1 and paper.video.vae_frames_per_chunk == 1
    assert default.controlnet.vae_frames_per_chunk == 0 and default.video.vae_frames_per_chunk == 0
