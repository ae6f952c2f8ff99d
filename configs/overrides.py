"""`--config.a.b=value` overrides for any ml_collections config (shared by both command lines)."""

import ast

PREFIX = "--config."


def split_overrides(argv):
    """Split argv into (other arguments, override strings "a.b=value" without the --config. prefix)."""
    overrides = [a[len(PREFIX) :] for a in argv if a.startswith(PREFIX)]
    return [a for a in argv if not a.startswith(PREFIX)], overrides


def _parse(raw, old, key):
    if isinstance(old, bool):
        if raw.lower() not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
            raise ValueError(f"config key {key!r} expects bool, got {raw!r}")
        return raw.lower() in ("1", "true", "yes", "on")
    if isinstance(old, str) or old is None:
        return raw
    try:
        val = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        raise ValueError(f"config key {key!r} expects {type(old).__name__}, got {raw!r}") from None
    if isinstance(old, float) and isinstance(val, int) and not isinstance(val, bool):
        val = float(val)
    if isinstance(old, tuple) and isinstance(val, list):
        val = tuple(val)
    if type(val) is not type(old):
        raise ValueError(f"config key {key!r} expects {type(old).__name__}, got {raw!r}")
    return val


def apply_overrides(config, overrides):
    """Set each "a.b=value" in `config`, parsing value with the type of the existing entry.

    Unknown keys and values of the wrong type raise ValueError naming the key. Returns the config.
    """
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"config override {item!r} must look like key.sub=value")
        key, raw = item.split("=", 1)
        node = config
        parts = key.split(".")
        for p in parts[:-1]:
            if p not in node:
                raise ValueError(f"unknown config key {key!r}")
            node = node[p]
        if parts[-1] not in node:
            raise ValueError(f"unknown config key {key!r}")
        node[parts[-1]] = _parse(raw, node[parts[-1]], key)
    return config
