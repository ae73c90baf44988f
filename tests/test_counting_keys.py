"""The dry run's key templates give exactly byzbn.grid.store.run_key of the identity with the values put in."""
import pytest

from byzbn.grid.counting import _KeyTemplate
from byzbn.grid.store import run_key

IDENTITY = {"attack": "sign-flip", "attack_params": {"z": 1.5}, "lr": 0.05, "momentum": 0.9, "eval_every": 25,
            "seed": 3, "schemes": ["fbn"], "width": 0.125, "pre": None, "note": "\"quoted\" ü"}


@pytest.mark.parametrize("own", [("lr",), ("lr", "momentum"), ("eval_every", "lr", "momentum"), ()])
@pytest.mark.parametrize("values", [{"lr": 0.001, "momentum": 0.99, "eval_every": 7},
                                    {"lr": 1e-300, "momentum": 0.0, "eval_every": 10 ** 9},
                                    {"lr": 0.05, "momentum": 0.9, "eval_every": 25}])
def test_a_template_key_is_the_run_key_of_the_identity_with_its_values(own, values):
    template = _KeyTemplate(IDENTITY, own)
    assert template.key(values) == run_key({**IDENTITY, **{k: values[k] for k in own}})
