"""configs/validate.py: the range rules beside every config value, and the CLIs refusing bad values early."""

import math
import re

import pytest

from clitools.errors import InputError
from configs import cine_train, cinemagraph, four_d, priors
from configs.validate import check_config, lookup, numeric_leaves, violation

CONFIG_MODULES = [cinemagraph, four_d, priors, cine_train]


@pytest.mark.parametrize(
    "value, rule, ok",
    [
        (1.5, "> 0", True),
        (0.0, "> 0", False),
        (0, ">= 0", True),
        (-1e-9, ">= 0", False),
        (1.0, "[0, 1]", True),
        (1.0, "[0, 1)", False),
        (0.0, "(0, 1]", False),
        (float("nan"), "[0, 1]", False),
        (3, "int >= 1", True),
        (3.0, "int >= 1", False),
        (True, "int >= 1", False),
        (0, "int [1, 64]", False),
        (5.0, "(0, inf)", True),
        (True, "bool", True),
        (1, "bool", False),
        ("lambertian", "one of albedo|lambertian", True),
        ("phong", "one of albedo|lambertian", False),
        ((45.0, 135.0), "each [0, 180]", True),
        ((45.0, 190.0), "each [0, 180]", False),
        ((), "each > 0", False),
    ],
)
def test_rules(value, rule, ok):
    assert (violation(value, rule) is None) == ok


def test_unreadable_rule_is_a_programming_error():
    with pytest.raises(ValueError, match="cannot read the rule"):
        violation(1.0, "positive please")


def _violating_value(value, rule):
    """A value of the right type just outside `rule` (None if the rule admits every value of the type)."""
    if rule == "bool":
        return 1
    if rule.startswith("one of"):
        return "not-a-choice"
    if rule.startswith("each "):
        inner = _violating_value(value[0], rule[5:])
        return None if inner is None else (inner,) + tuple(value[1:])
    is_int = rule.startswith("int ")
    body = rule[4:] if is_int else rule
    m = re.match(r"^(>=|<=|>|<)\s*(\S+)$", body)
    if m:
        bound = float(m.group(2))
        step = 1 if is_int else 1e-3 * max(1.0, abs(bound))
        bad = bound - step if m.group(1) in (">", ">=") else bound + step
        if m.group(1) in (">", "<"):
            bad = bound
    else:
        m = re.match(r"^([\[(])\s*(\S+)\s*,\s*(\S+)\s*([\])])$", body)
        lo, hi = float(m.group(2)), float(m.group(3))
        if math.isfinite(hi):
            bad = hi if m.group(4) == ")" else hi + (1 if is_int else 1e-3 * max(1.0, abs(hi)))
        else:
            bad = lo if m.group(1) == "(" else lo - (1 if is_int else 1e-3 * max(1.0, abs(lo)))
    return int(bad) if is_int else float(bad)


def _is_text(value):
    """Strings and tuples of strings (prompts, suffix words) need no rule; choices among names may have one."""
    if isinstance(value, tuple | list):
        return len(value) > 0 and all(isinstance(x, str) for x in value)
    return isinstance(value, str)


@pytest.mark.parametrize("module", CONFIG_MODULES, ids=lambda m: m.__name__)
def test_every_number_has_a_rule_and_every_variant_passes(module):
    for variant in (None, "tiny", "paper"):
        cfg = module.get_config(variant)
        needs = {k for k in numeric_leaves(cfg) if not _is_text(lookup(cfg, k))}
        assert needs - set(module.RANGES) == set(), f"{module.__name__}: keys without a rule"
        assert set(module.RANGES) - set(numeric_leaves(cfg)) == set(), f"{module.__name__}: rules for no key"
        check_config(cfg, module.RANGES)


@pytest.mark.parametrize("module", CONFIG_MODULES, ids=lambda m: m.__name__)
def test_every_rule_rejects_a_value_outside_it(module):
    for key, rule in module.RANGES.items():
        cfg = module.get_config()
        bad = _violating_value(lookup(cfg, key), rule)
        assert bad is not None, key
        node = cfg
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        with node.ignore_type():
            node[leaf] = bad
        with pytest.raises(InputError, match=re.escape(f"config key {key!r}")):
            check_config(cfg, module.RANGES)
