"""Optax optimisers by the names configs use ('adam', 'adamw', 'sgd').

The training loop takes any `optax.GradientTransformation`; this is only the map from a
config's `optimizer` / `learning_rate` / `weight_decay` to one.
"""

from __future__ import annotations

import functools

import optax

OPTIMIZERS = ("adam", "adamw", "sgd")


@functools.lru_cache(maxsize=128)
def make_optimizer(name: str, learning_rate: float, weight_decay: float = 0.0) -> optax.GradientTransformation:
    """'adam' | 'adamw' | 'sgd' (momentum 0.9) at `learning_rate`.

    Memoised: the loop's compiled step takes the optimiser as a static argument, so the same
    object for the same settings is what lets a second run reuse the compiled step.
    """
    if learning_rate <= 0:
        raise ValueError(f"learning_rate must be > 0, got {learning_rate}.")
    if name == "adam":
        return optax.adam(learning_rate)
    if name == "adamw":
        return optax.adamw(learning_rate, weight_decay=weight_decay)
    if name == "sgd":
        return optax.sgd(learning_rate, momentum=0.9)
    raise ValueError(f"Unknown optimizer {name!r}; choose one of {OPTIMIZERS}.")
