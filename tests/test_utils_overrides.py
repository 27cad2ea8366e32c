"""Dotted-path config overrides."""
import pytest

from configs import selective_labeling as sl_config
from ecos_jax.utils.overrides import override


def test_override_sets_nested_fields_on_a_copy():
    base = sl_config.get_config("quick")
    c = override(base, {"data.pool": "ood", "ecos.epsilon": 1.0, "num_seeds": 1})
    assert (c.data.pool, c.ecos.epsilon, c.num_seeds) == ("ood", 1.0, 1)
    assert (base.data.pool, base.ecos.epsilon) == ("id+ood", 0.58)  # untouched
    assert c.is_locked == base.is_locked


@pytest.mark.parametrize("field", ["ecos.epsilonn", "ecoss.epsilon", "budgt"])
def test_override_refuses_unknown_fields(field):
    with pytest.raises(KeyError, match=field.split(".")[-1] if "ecoss" not in field else "ecoss"):
        override(sl_config.get_config(), {field: 1})
