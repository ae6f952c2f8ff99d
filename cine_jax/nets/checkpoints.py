"""Reading official PyTorch / safetensors checkpoints, and writing and reading converted Flax variables.

Official files are read with `torch.load(map_location="cpu", weights_only=True)` (.pth, .pt, .bin, .ckpt)
or `safetensors.numpy.load_file` (.safetensors); torch is imported inside `read_checkpoint` only.

Key mapping (one rule for every network in cine_jax.nets): a Flax variable at path
(collection, m1, m2, ..., leaf) corresponds to the PyTorch key `prefix + "m1.m2....." + torch_leaf` where
torch_leaf = TORCH_LEAF_NAMES.get(leaf, leaf). The collection is not part of the key (the spectral-norm
vectors live in the "spectral" collection but are state-dict buffers `weight_u` / `weight_v` in PyTorch).
4-D arrays are conv kernels: PyTorch OIHW <-> Flax HWIO. Every other array keeps its shape.

`variables_from_state_dict` walks the module's variable template (from `jax.eval_shape(module.init)`), so
every Flax variable must be found with the right shape, and every state-dict key under the prefix must be
used. Anything else is a ValueError naming the file, the key and the expected shape: nothing is skipped.

Converted output (written by `save_converted`, read by `load_converted`), for a network called NAME:
    DIR/NAME.safetensors   flat {"collection/m1/m2/leaf": float32 array} in Flax layout
    DIR/NAME.json          {"format": "cine-jax-flax", "version": 1, "module": "cine_jax.nets.x:Class",
                            "config": {module dataclass fields}, "source": {...}, "num_params": int}
Contract for a module class that is converted: its dataclass fields are JSON-serialisable (dtypes are
written as names and restored; a field holding a frozen config dataclass, e.g. PartialConvUNetConfig, is
written as a dict of its fields and rebuilt with the class of the field's default), and it has a method
`dummy_inputs()` returning a tuple of small arrays that `init` accepts (used to build the variable template
without real data).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "TORCH_LEAF_NAMES",
    "load_converted",
    "module_config",
    "read_checkpoint",
    "save_converted",
    "select_entry",
    "torch_key",
    "variable_template",
    "variables_from_state_dict",
]

FORMAT = "cine-jax-flax"
VERSION = 1
TORCH_LEAF_NAMES = {"kernel": "weight", "scale": "weight"}
TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".tar")
_MAX_LISTED = 12


def _fail(path, problem):
    raise ValueError(f"{path}: {problem}")


# ----------------------------------------------------------------------------------------------------
# reading official files


def read_checkpoint(path):
    """The object stored in a checkpoint file: a dict (possibly nested) whose leaves are NumPy arrays.

    .safetensors -> flat {key: array}; .pth/.pt/.bin/.ckpt/.tar -> torch.load(weights_only=True) with every
    tensor converted to NumPy (bfloat16/float16 tensors become float32). A missing, empty, truncated or
    unreadable file is a ValueError naming the file.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        _fail(path, "is a folder; expected a checkpoint file")
    if not os.path.isfile(path):
        _fail(path, "checkpoint file not found")
    if os.path.getsize(path) == 0:
        _fail(path, "checkpoint file is empty")
    if path.endswith(".safetensors"):
        from safetensors.numpy import load_file

        try:
            return load_file(path)
        except Exception as e:  # safetensors raises its own error types for corrupt headers
            _fail(path, f"cannot read safetensors file ({type(e).__name__}: {e})")
    if not path.endswith(TORCH_SUFFIXES):
        _fail(path, f"unknown checkpoint type; expected .safetensors or one of {TORCH_SUFFIXES}")
    try:
        import torch
    except ImportError:
        _fail(path, "reading PyTorch checkpoints needs torch (pip install 'cine-jax[convert]')")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip archives, pickles with non-tensor objects, ...
        _fail(path, f"cannot read PyTorch checkpoint, truncated or not a weights file ({type(e).__name__}: {e})")
    return _to_numpy(obj, torch)


def _to_numpy(obj, torch):
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu()
        if t.dtype in (torch.bfloat16, torch.float16):
            t = t.float()
        return t.numpy()
    if isinstance(obj, dict):
        return {k: _to_numpy(v, torch) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_numpy(v, torch) for v in obj)
    return obj


def select_entry(obj, entry, path):
    """obj[entry] as a flat state dict {str: array}; entry None means obj itself. Errors name the file."""
    if not isinstance(obj, dict):
        _fail(path, f"expected a dict at the top level, got {type(obj).__name__}")
    if entry is not None:
        if entry not in obj:
            keys = sorted(str(k) for k in obj)
            _fail(path, f"no entry {entry!r}; top-level entries: {keys[:_MAX_LISTED]}")
        obj = obj[entry]
        where = f"entry {entry!r}"
    else:
        where = "top level"
    if not isinstance(obj, dict):
        _fail(path, f"{where} is not a state dict (got {type(obj).__name__})")
    for k, v in obj.items():
        if not isinstance(v, np.ndarray):
            _fail(path, f"{where}: key {k!r} is not a tensor (got {type(v).__name__})")
    return obj


# ----------------------------------------------------------------------------------------------------
# mapping a state dict onto a Flax variable template


def torch_key(flax_path, prefix=""):
    """PyTorch key of a Flax variable path (collection, m1, ..., leaf): prefix + "m1....leaf'"."""
    *modules, leaf = flax_path[1:]
    return prefix + ".".join([*modules, TORCH_LEAF_NAMES.get(leaf, leaf)])


def _torch_shape(shape):
    shape = tuple(shape)
    return (shape[3], shape[2], shape[0], shape[1]) if len(shape) == 4 else shape


def _to_flax(array):
    array = np.asarray(array, np.float32)
    return np.ascontiguousarray(array.transpose(2, 3, 1, 0)) if array.ndim == 4 else array


def _from_flax(array):
    array = np.asarray(array, np.float32)
    return np.ascontiguousarray(array.transpose(3, 2, 0, 1)) if array.ndim == 4 else array


def _flatten(tree):
    """{(collection, ..., leaf): value} of a nested dict."""
    out = {}

    def walk(node, path):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, (*path, str(k)))
        else:
            out[path] = node

    walk(tree, ())
    return out


def _unflatten(flat):
    tree = {}
    for path, value in flat.items():
        node = tree
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = value
    return tree


def variable_template(module):
    """{collection: nested {name: jax.ShapeDtypeStruct}} of module, without allocating anything."""
    inputs = module.dummy_inputs()
    return _plain(jax.eval_shape(module.init, jax.random.key(0), *inputs))


def _plain(tree):
    if hasattr(tree, "items"):
        return {k: _plain(v) for k, v in tree.items()}
    return tree


def variables_from_state_dict(state, template, path, prefix=""):
    """Flax variables (nested dicts of float32 NumPy arrays) for `template` filled from a PyTorch state dict.

    state: {torch key: array} (see `select_entry`); template: `variable_template(module)`; path: the file
    (for messages); prefix: the state-dict prefix of this network (e.g. "motion_predictor.").
    Raises one ValueError listing every missing key, wrong shape and unexpected key (up to a dozen each).
    """
    flat = _flatten(template)
    missing, wrong, used, out = [], [], set(), {}
    for fpath, spec in flat.items():
        key = torch_key(fpath, prefix)
        expected = _torch_shape(spec.shape)
        if key not in state:
            missing.append(f"{key} (expected shape {list(expected)})")
            continue
        value = np.asarray(state[key])
        used.add(key)
        if tuple(value.shape) != expected:
            wrong.append(f"{key}: expected shape {list(expected)}, found {list(value.shape)}")
            continue
        if not np.issubdtype(value.dtype, np.floating):
            wrong.append(f"{key}: expected a floating tensor, found dtype {value.dtype}")
            continue
        out[fpath] = _to_flax(value)
    unexpected = sorted(k for k in state if k not in used)
    problems = []
    for title, items in (("missing keys", missing), ("wrong shapes", wrong), ("unexpected keys", unexpected)):
        if items:
            more = f" ... and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else ""
            problems.append(f"{title} ({len(items)}): " + "; ".join(items[:_MAX_LISTED]) + more)
    if problems:
        where = f" under prefix {prefix!r}" if prefix else ""
        _fail(path, f"does not match the network{where}: " + " | ".join(problems))
    return _unflatten(out)


# ----------------------------------------------------------------------------------------------------
# module configs


def conv_shapes(state, keys, path, what):
    """Shapes of the conv weights `keys` ([O, I, kh, kw] each) of `state`, for reading a module's widths off a
    checkpoint; a missing or non-4-D one is a ValueError naming the file (not a WHAT state dict?)."""
    shapes = []
    for key in keys:
        if key not in state or len(np.shape(state[key])) != 4:
            raise ValueError(f"{path}: missing conv weight {key} (not a {what} state dict?)")
        shapes.append(tuple(int(d) for d in np.shape(state[key])))
    return shapes


def module_from_state_dict(cls, config, state, path, prefix="", **kwargs):
    """(module, variables): `cls(**config, **kwargs)` and its variables from `state` (every key checked)."""
    module = cls(**config, **kwargs)
    return module, variables_from_state_dict(state, variable_template(module), path, prefix=prefix)


def module_config(module):
    """JSON-serialisable dict of a Flax module's dataclass fields (dtypes as names; parent/name dropped)."""
    cfg = {}
    for f in dataclasses.fields(module):
        if f.name in ("parent", "name"):
            continue
        value = getattr(module, f.name)
        if f.name.endswith("dtype"):
            value = jnp.dtype(value).name
        elif dataclasses.is_dataclass(value):  # an architecture config (PartialConvUNetConfig, DPTHybridConfig)
            value = {f2.name: _jsonable(getattr(value, f2.name)) for f2 in dataclasses.fields(value)}
        elif isinstance(value, tuple):
            value = list(value)
        cfg[f.name] = value
    json.dumps(cfg)  # fail early on anything that would not round-trip
    return cfg


def _jsonable(value):
    return list(value) if isinstance(value, tuple) else value


def _module_from_config(class_path, config, overrides, path):
    modname, _, clsname = str(class_path).partition(":")
    if not modname.startswith("cine_jax.nets.") or not clsname:
        _fail(path, f"'module' must name a class in cine_jax.nets (module:Class), got {class_path!r}")
    try:
        cls = getattr(importlib.import_module(modname), clsname)
    except (ImportError, AttributeError):
        _fail(path, f"unknown network class {class_path!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for k, v in {**config, **overrides}.items():
        if k not in fields:
            _fail(path, f"config key {k!r} is not an argument of {clsname}")
        default = fields[k].default
        if k.endswith("dtype"):
            v = jnp.dtype(v)
        elif dataclasses.is_dataclass(default) and isinstance(v, dict):
            try:
                v = type(default)(**{n: tuple(x) if isinstance(x, list) else x for n, x in v.items()})
            except (TypeError, ValueError) as e:
                _fail(path, f"config key {k!r}: {e}")
        elif isinstance(v, list):
            v = tuple(v)
        kwargs[k] = v
    return cls(**kwargs)


# ----------------------------------------------------------------------------------------------------
# converted files


def _atomic_write(path, write):
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(path))
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def save_converted(out_dir, name, module, variables, source=None):
    """Write DIR/name.safetensors (float32, Flax layout) and DIR/name.json; returns the two paths."""
    from safetensors.numpy import save_file

    os.makedirs(out_dir, exist_ok=True)
    flat = {"/".join(p): _np32(v) for p, v in _flatten(_plain(variables)).items()}
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "module": f"{type(module).__module__}:{type(module).__name__}",
        "config": module_config(module),
        "source": source or {},
        "num_params": int(sum(v.size for v in flat.values())),
    }
    weights = os.path.join(out_dir, f"{name}.safetensors")
    config = os.path.join(out_dir, f"{name}.json")
    _atomic_write(weights, lambda p: save_file(flat, p, metadata={"format": FORMAT}))
    _atomic_write(config, lambda p: _write_json(p, meta))
    return weights, config


def _np32(value):
    return np.array(value, dtype=np.float32, order="C")  # (ascontiguousarray would turn a scalar into [1])


def _write_json(path, obj):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")


def load_converted(path, expected_class=None, dtype=None, **overrides):
    """(module, variables) from a converted NAME.json / NAME.safetensors pair (either path, or NAME stem).

    The JSON names the module class and its config; overrides replace config fields (e.g. dtype, or the
    power_iteration switch of the motion net). dtype (e.g. jnp.bfloat16) also casts the floating variables.
    expected_class (a class or its name) guards against loading the wrong network. Shapes are checked
    against the module's own template; every problem is a ValueError naming the file.
    """
    from safetensors.numpy import load_file

    stem = os.fspath(path)
    for ext in (".json", ".safetensors"):
        if stem.endswith(ext):
            stem = stem[: -len(ext)]
    json_path, weights_path = stem + ".json", stem + ".safetensors"
    for p in (json_path, weights_path):
        if not os.path.isfile(p):
            _fail(p, "converted weights file not found (run `cine-jax convert` on the official checkpoint)")
    try:
        with open(json_path, encoding="utf-8") as f:
            meta = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        _fail(json_path, f"not valid JSON ({e})")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        _fail(json_path, f"not a cine-jax converted-weights description (expected format {FORMAT!r})")
    if meta.get("version") != VERSION:
        _fail(json_path, f"unsupported version {meta.get('version')!r} (this cine-jax reads {VERSION})")
    if dtype is not None:
        overrides = {**overrides, "dtype": dtype}
    module = _module_from_config(meta.get("module"), meta.get("config", {}), overrides, json_path)
    if expected_class is not None:
        name = expected_class if isinstance(expected_class, str) else expected_class.__name__
        if type(module).__name__ != name:
            _fail(json_path, f"holds a {type(module).__name__}, expected a {name}")
    try:
        arrays = load_file(weights_path)
    except Exception as e:
        _fail(weights_path, f"cannot read safetensors file ({type(e).__name__}: {e})")
    template = _flatten(variable_template(module))
    found = {tuple(k.split("/")): v for k, v in arrays.items()}
    problems = [
        f"missing {'/'.join(p)} (expected shape {list(s.shape)})" for p, s in template.items() if p not in found
    ]
    problems += [
        f"{'/'.join(p)}: expected shape {list(template[p].shape)}, found {list(v.shape)}"
        for p, v in found.items()
        if p in template and tuple(v.shape) != tuple(template[p].shape)
    ]
    problems += [f"unexpected {'/'.join(p)}" for p in found if p not in template]
    if problems:
        _fail(weights_path, "does not match its JSON config: " + "; ".join(problems[:_MAX_LISTED]))
    variables = _unflatten({p: jnp.asarray(v) for p, v in found.items()})
    if dtype is not None:
        from cine_jax.nets import cast_floating

        variables = cast_floating(variables, dtype)
    return module, variables
