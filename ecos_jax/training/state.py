"""`TrainState`: what one step of any training run reads and writes."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

PyTree = Any


class TrainState(NamedTuple):
    """params: the model's variables; opt_state: the optax state (for DP-SGD it carries the
    secret noise key, `noise.NoiseState`); step: int32 [] optimiser steps taken; rng: the key
    batches are drawn from (shuffles, Poisson samples), None where batches need none."""

    params: PyTree
    opt_state: optax.OptState
    step: jax.Array
    rng: jax.Array | None = None


def init_state(params: PyTree, tx: optax.GradientTransformation, rng: jax.Array | None = None) -> TrainState:
    """A fresh state at step 0 (`params` is used as given: copy it first if a step donates)."""
    return TrainState(params, tx.init(params), jnp.zeros([], jnp.int32), rng)
