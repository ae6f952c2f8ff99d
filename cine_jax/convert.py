"""`cine-jax convert SRC --to DIR`: official checkpoints -> Flax variables (.safetensors + .json per network).

    from cine_jax.convert import convert
    convert("ckpts/", "weights/")                 # every recognised file in the folder
    convert("ckpts/sceneflow_model.pth", "weights/")
    python -m cine_jax.convert SRC --to DIR [--kind NAME]

Official files and what they become in DIR (read back with `cine_jax.nets.checkpoints.load_converted`):

    kind        file pattern          entries read                          written
    sceneflow   sceneflow_model.pth   netG (prefix motion_predictor.)       motion.{safetensors,json}
    model       model_*.pth           feature_net, img_decoder              feature_net.*, img_decoder.*
                                      (netD, optimG/D, schedG/D are training state: not converted)

Registry contract (add a converter with one `register_converter` call at the bottom of this module):
  - `register_converter(name, convert, patterns=(), matcher=None, description="")`
      name      unique short id, also accepted as `kind=` / `--kind` to force the converter;
      convert   function (src: str, out_dir: str) -> list[str] of the files it wrote. It reads src itself
                (`checkpoints.read_checkpoint`, which imports torch lazily; never import torch at module
                level), builds the Flax variables (`checkpoints.variables_from_state_dict`, so every key is
                checked) and writes them with `checkpoints.save_converted(out_dir, NAME, module, variables,
                source)`. Any problem is a ValueError whose message starts with the offending path;
      patterns  fnmatch patterns on the base name of a file (or folder) it handles;
      matcher   optional predicate(path) -> bool for what patterns cannot express (e.g. a transformers
                model folder recognised by its config.json).
  - Each converter writes distinct NAMEs (the table above, extended by the new entry) so that converting
    a whole folder never overwrites one network with another.
  - `convert(src, to, kind=None)`: a file is converted by `kind` or by the one converter that matches it
    (none or several is an error); a folder is converted by a converter that matches the folder itself,
    otherwise every entry of it (not recursive) that some converter matches is converted, and a folder
    with nothing recognised is an error. Returns every written path.
"""

from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import os
import sys
from collections.abc import Callable

__all__ = ["Converter", "convert", "converters", "find_converter", "main", "register_converter"]


@dataclasses.dataclass(frozen=True)
class Converter:
    name: str
    convert: Callable[[str, str], list]
    patterns: tuple = ()
    matcher: Callable[[str], bool] | None = None
    description: str = ""

    def matches(self, path):
        base = os.path.basename(os.path.normpath(path))
        if any(fnmatch.fnmatch(base, p) for p in self.patterns):
            return True
        return bool(self.matcher and self.matcher(path))


_REGISTRY: dict[str, Converter] = {}


def register_converter(name, convert, patterns=(), matcher=None, description=""):
    """Register a converter (see the module docstring for the contract); returns it."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"converter name must be a non-empty string, got {name!r}")
    if name in _REGISTRY:
        raise ValueError(f"a converter named {name!r} is already registered")
    if not callable(convert):
        raise ValueError(f"converter {name!r}: convert must be callable")
    if isinstance(patterns, str):
        patterns = (patterns,)
    conv = Converter(name, convert, tuple(patterns), matcher, description)
    _REGISTRY[name] = conv
    return conv


def converters():
    """{name: Converter} of every registered converter."""
    return dict(_REGISTRY)


def find_converter(path, kind=None):
    """The converter for path: `kind` if given, else the single registered converter that matches it."""
    if kind is not None:
        if kind not in _REGISTRY:
            raise ValueError(f"unknown converter kind {kind!r}; registered: {sorted(_REGISTRY)}")
        return _REGISTRY[kind]
    found = [c for c in _REGISTRY.values() if c.matches(path)]
    if not found:
        known = "; ".join(f"{c.name}: {', '.join(c.patterns) or c.description}" for c in _REGISTRY.values())
        raise ValueError(f"{path}: not a recognised official checkpoint (known: {known}); pass kind= to force one")
    if len(found) > 1:
        raise ValueError(f"{path}: matched by several converters {[c.name for c in found]}; pass kind= to choose")
    return found[0]


def convert(src, to, kind=None):
    """Convert an official file, or every recognised file in a folder, into DIR `to`; returns written paths."""
    src = os.fspath(src)
    to = os.fspath(to)
    if not os.path.exists(src):
        raise ValueError(f"{src}: no such file or folder")
    if os.path.isdir(src) and kind is None and not any(c.matches(src) for c in _REGISTRY.values()):
        entries = sorted(os.path.join(src, e) for e in os.listdir(src))
        jobs = [(e, c) for e in entries for c in _REGISTRY.values() if c.matches(e)]
        if not jobs:
            raise ValueError(f"{src}: the folder holds no recognised official checkpoint")
        return [p for e, c in jobs for p in c.convert(e, to)]
    return list(find_converter(src, kind).convert(src, to))


# ----------------------------------------------------------------------------------------------------
# converters of this repository's networks


def _convert_sceneflow(src, out_dir):
    from cine_jax.nets import checkpoints as ck
    from cine_jax.nets import motion

    state = ck.select_entry(ck.read_checkpoint(src), "netG", src)
    prefix = "motion_predictor."
    module, variables = motion.from_state_dict(state, src, prefix=prefix)
    source = {"file": os.path.abspath(src), "entry": "netG", "prefix": prefix}
    return list(ck.save_converted(out_dir, "motion", module, variables, source))


def _convert_model(src, out_dir):
    from cine_jax.nets import checkpoints as ck
    from cine_jax.nets import decoder, features

    obj = ck.read_checkpoint(src)
    written = []
    # Validate both networks before writing either, so a bad file leaves no half conversion behind.
    nets = []
    for entry, name, mod in (("feature_net", "feature_net", features), ("img_decoder", "img_decoder", decoder)):
        module, variables = mod.from_state_dict(ck.select_entry(obj, entry, src), src)
        nets.append((entry, name, module, variables))
    ignored = sorted(str(k) for k in obj if k not in ("feature_net", "img_decoder"))
    for entry, name, module, variables in nets:
        source = {"file": os.path.abspath(src), "entry": entry, "prefix": "", "not_converted": ignored}
        written += ck.save_converted(out_dir, name, module, variables, source)
    return written


register_converter(
    "sceneflow", _convert_sceneflow, ("sceneflow_model.pth",), description="motion estimator (netG)"
)
register_converter(
    "model", _convert_model, ("model_*.pth",), description="feature net and image decoder (model_150000.pth)"
)


# ----------------------------------------------------------------------------------------------------


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m cine_jax.convert", description=__doc__.splitlines()[0])
    ap.add_argument("src", help="an official checkpoint file, or a folder of them")
    ap.add_argument("--to", required=True, help="output folder for the converted .safetensors + .json")
    ap.add_argument("--kind", default=None, help=f"force a converter: {sorted(_REGISTRY)}")
    args = ap.parse_args(argv)
    try:
        for path in convert(args.src, args.to, args.kind):
            print(path)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
