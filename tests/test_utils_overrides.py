"""Dotted-path config overrides through ml_collections: a copy, typed, one-line errors."""
import math

import pytest

from configs import selective_labeling as sl_config
from ecos_jax.utils.errors import ConfigError
from ecos_jax.utils.overrides import fields, floats, override


def test_override_sets_nested_fields_on_a_copy():
    base = sl_config.get_config("quick")
    c = override(base, {"data.pool": "ood", "ecos.epsilon": 1.0, "num_seeds": 1,
                        "ecos.noise_seed": 0, "ecos.delta": 1e-6})
    assert (c.data.pool, c.ecos.epsilon, c.num_seeds, c.ecos.noise_seed) == ("ood", 1.0, 1, 0)
    assert (base.data.pool, base.ecos.epsilon, base.ecos.noise_seed) == ("id+ood", 0.58, None)
    assert c.is_locked == base.is_locked
    assert override(base, {"ecos.epsilon": 2}).ecos.epsilon == 2.0  # an int widens to a float field


@pytest.mark.parametrize("field, hint", [("ecos.epsilonn", "ecos.epsilon"), ("ecoss.epsilon", "ecos.epsilon"),
                                         ("budgt", "budgets"), ("ecos", None)])
def test_override_refuses_unknown_fields_in_one_line(field, hint):
    with pytest.raises(ConfigError) as e:
        override(sl_config.get_config(), {field: 1})
    msg = str(e.value)
    assert f"Unknown config field {field!r}" in msg and "\n" not in msg
    assert (f"did you mean {hint!r}" in msg) if hint else "did you mean" not in msg


def test_override_refuses_a_value_of_the_wrong_type():
    with pytest.raises(ConfigError, match=r"Cannot set 'num_seeds' to 'three'.*int"):
        override(sl_config.get_config(), {"num_seeds": "three"})


def test_fields_lists_every_leaf():
    f = fields(sl_config.get_config())
    assert {"seed", "ecos.noise_seed", "data.split_seed", "train.model"} <= set(f)
    assert "ecos" not in f


def test_floats_reads_every_form_the_command_line_gives():
    assert floats((1, 8.0, math.inf), "epsilons") == (1.0, 8.0, math.inf)
    assert floats(("(1.0,8.0,inf)",), "epsilons") == (1.0, 8.0, math.inf)  # '(1,8,inf)' on the CLI
    assert floats("1, 3,inf", "epsilons") == (1.0, 3.0, math.inf)
    with pytest.raises(ValueError, match="epsilons must be comma-separated"):
        floats(("1,x",), "epsilons")
    with pytest.raises(ValueError, match="epsilons is empty"):
        floats((), "epsilons")
