"""configs/priors.py: variants, the official values, and every key read by the prior that owns its section."""

import inspect
import os
import re
import subprocess
import sys

import pytest

from configs.priors import get_config
from four_d.priors import controlnet, sd, sds, textual_inversion, video, zero123

OWNERS = {"sd": [sd, sds], "zero123": [zero123, sds], "video": [video, sd, sds], "controlnet": [controlnet, sd, sds],
          "textual_inversion": [textual_inversion]}
SHARED = ("guidance_scale", "lambda_guidance", "grad_clip")  # read by common.knob_defaults for every prior


def test_variants():
    paper, tiny = get_config("paper"), get_config("tiny")
    # the default is the official setting; `paper` adds only memory settings that leave the result unchanged
    # (frames through the VAE encoder one at a time: tests/test_priors_chunked.py proves chunked = unchunked)
    default, pd = get_config().to_dict(), paper.to_dict()
    for prior in ("video", "controlnet"):
        assert default[prior].pop("vae_frames_per_chunk") == 0 and pd[prior].pop("vae_frames_per_chunk") == 1
    assert default == pd
    assert tiny.sd.image_size == 64 and tiny.textual_inversion.steps < paper.textual_inversion.steps
    with pytest.raises(ValueError, match="unknown variant"):
        get_config("huge")


def test_official_values():
    c = get_config("paper")
    assert (c.sd.guidance_scale, c.zero123.guidance_scale, c.controlnet.guidance_scale, c.video.guidance_scale) == (
        100.0, 5.0, 7.5, 100.0)  # --guidance_scale 100 5 7.5 / run-dynamic.sh 100
    assert (c.sd.cfg_form, c.zero123.cfg_form, c.controlnet.cfg_form) == ("official", "upstream", "official")
    assert tuple(c.sd.t_range) == (0.2, 0.6) and tuple(c.video.t_range) == (0.02, 0.98)
    assert tuple(c.controlnet.t_range) == (0.2, 0.8) and c.zero123.lambda_guidance == 40.0
    assert (c.sd.image_size, c.zero123.image_size, c.video.image_size, c.controlnet.image_size) == (512, 256, 256, 1024)
    assert c.controlnet.loss_target == "x0" and c.controlnet.num_frames == 2
    ti = c.textual_inversion
    assert (ti.steps, ti.batch_size, ti.learning_rate, ti.weight_decay) == (3000, 16, 1e-4, 1e-2)


@pytest.mark.parametrize("section", sorted(OWNERS))
def test_every_key_is_read(section):
    """A config key that nothing reads is a defect: each key of a section appears as `.key` in its owners."""
    src = "\n".join(inspect.getsource(m) for m in OWNERS[section] + [sd.common])
    for key in get_config()[section]:
        if key in SHARED:
            continue
        assert re.search(rf"\.{key}\b|\[\"{key}\"\]|\[k\] for k in|\"{key}\"", src), f"{section}.{key} is never read"


def test_importing_the_priors_imports_neither_torch_nor_diffusers():
    code = ("import sys; import four_d.priors.sd, four_d.priors.zero123, four_d.priors.controlnet, "
            "four_d.priors.video, four_d.priors.textual_inversion, configs.priors; "
            "print(sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root,
                         env={**os.environ, "PYTHONPATH": root}, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]", out.stdout
