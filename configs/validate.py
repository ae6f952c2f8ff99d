"""Ranges of config values, declared in each config module beside the values, checked before any compute.

A config module defines ``RANGES = {"section.key": rule, ...}`` next to its ``get_config``; the command lines
(and the Python entry points) call ``check_config(cfg, RANGES)`` after the overrides are applied. Rules are
short strings a researcher can read next to the value:

    "> 0"   ">= 1"   "< 1"   "<= 80"             one comparison
    "[0, 1]"   "(0, 1]"   "[0, inf)"            an interval (open or closed ends)
    "int >= 1"   "int [1, 64]"                  the value must also be an integer
    "one of a|b|c"                              a string from a fixed set
    "each [0, 180]"   "each > 0"                every element of a tuple/list
    "bool"                                      True or False

A violation raises clitools.errors.InputError naming the key, the value and the rule:
``config key 'render.point_radius' = -1.0: must be > 0``.
"""

import math
import re

from clitools.errors import InputError

_NUM = r"[-+]?(?:inf|\d+(?:\.\d*)?(?:e[-+]?\d+)?|\.\d+(?:e[-+]?\d+)?)"
_CMP = re.compile(rf"^(>=|<=|>|<)\s*({_NUM})$")
_INTERVAL = re.compile(rf"^([\[(])\s*({_NUM})\s*,\s*({_NUM})\s*([\])])$")


def lookup(cfg, key):
    """cfg["a"]["b"] for key "a.b" (KeyError naming the key when missing)."""
    node = cfg
    for part in key.split("."):
        try:
            node = node[part]
        except (KeyError, TypeError):
            raise KeyError(f"config has no key {key!r}") from None
    return node


def _is_number(v):
    return isinstance(v, int | float) and not isinstance(v, bool)


def _check_scalar(value, rule):
    """None if `value` satisfies `rule`, else the reason."""
    rule = rule.strip()
    if rule == "bool":
        return None if isinstance(value, bool) else "must be true or false"
    if rule.startswith("one of "):
        choices = [c.strip() for c in rule[len("one of ") :].split("|")]
        return None if value in choices else f"must be one of {', '.join(choices)}"
    want_int = rule.startswith("int ")
    if want_int:
        rule = rule[4:].strip()
        if not (isinstance(value, int) and not isinstance(value, bool)):
            return f"must be an integer {rule}"
    if not _is_number(value) or math.isnan(value):
        return f"must be a number {rule}"
    m = _CMP.match(rule)
    if m:
        op, bound = m.group(1), float(m.group(2))
        ok = {">": value > bound, ">=": value >= bound, "<": value < bound, "<=": value <= bound}[op]
        return None if ok else f"must be {rule}"
    m = _INTERVAL.match(rule)
    if m:
        lo, hi = float(m.group(2)), float(m.group(3))
        ok_lo = value >= lo if m.group(1) == "[" else value > lo
        ok_hi = value <= hi if m.group(4) == "]" else value < hi
        return None if (ok_lo and ok_hi) else f"must be in {rule}"
    raise ValueError(f"configs/validate.py: cannot read the rule {rule!r}")


def violation(value, rule):
    """None if `value` satisfies `rule` (see the module docstring), else a short reason."""
    if rule.startswith("each "):
        if not isinstance(value, tuple | list) or not value:
            return "must be a non-empty list"
        for i, v in enumerate(value):
            reason = _check_scalar(v, rule[5:])
            if reason:
                return f"element {i} ({v!r}) {reason}"
        return None
    return _check_scalar(value, rule)


def check_config(cfg, ranges):
    """Raise InputError for the first value of `cfg` outside its rule in `ranges` (key -> rule)."""
    for key, rule in ranges.items():
        value = lookup(cfg, key)
        reason = violation(value, rule)
        if reason:
            raise InputError(f"config key {key!r} = {value!r}: {reason}")
    return cfg


def numeric_leaves(cfg, prefix=""):
    """Dotted keys of every number, bool, string and number tuple in `cfg` (what RANGES must cover)."""
    out = []
    for k, v in cfg.items():
        key = f"{prefix}{k}"
        if hasattr(v, "items"):
            out.extend(numeric_leaves(v, key + "."))
        elif isinstance(v, bool | int | float | str | tuple | list):
            out.append(key)
    return out
