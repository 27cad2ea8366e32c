"""Linear probe: multinomial logistic regression on frozen features, full batch, jitted.

Features are standardised with the training set's mean and std, then a softmax classifier
with L2 penalty is fit by full-batch Adam (a fixed number of steps inside one `lax.scan`,
deterministic, zero init). Accuracy on the held-out set is the representation's score.

    >>> res = linear_probe(f_train, y_train, f_test, y_test, num_classes=10)
    >>> res.test_accuracy  # in [0, 1]
"""

from __future__ import annotations

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax


@dataclasses.dataclass(frozen=True)
class ProbeResult:
    """Top-1 accuracies in [0, 1] of the probe on its training and held-out features."""

    train_accuracy: float
    test_accuracy: float


@partial(jax.jit, static_argnames=("num_classes", "steps"))
def _fit_probe(f_train, y_train, f_test, y_test, *, num_classes, steps, l2, learning_rate):
    mean = jnp.mean(f_train, axis=0)
    std = jnp.std(f_train, axis=0) + 1e-6  # constant (dead) features stay at zero
    a, b = (f_train - mean) / std, (f_test - mean) / std
    params = (jnp.zeros((a.shape[1], num_classes)), jnp.zeros((num_classes,)))
    tx = optax.adam(learning_rate)

    def loss(p):
        logits = a @ p[0] + p[1]
        xent = optax.softmax_cross_entropy_with_integer_labels(logits, y_train).mean()
        return xent + l2 * jnp.sum(p[0] ** 2)

    def step(carry, _):
        p, s = carry
        g = jax.grad(loss)(p)
        u, s = tx.update(g, s, p)
        return (optax.apply_updates(p, u), s), None

    (params, _), _ = jax.lax.scan(step, (params, tx.init(params)), None, length=steps)
    acc = lambda f, y: jnp.mean(jnp.argmax(f @ params[0] + params[1], -1) == y)  # noqa: E731
    return acc(a, y_train), acc(b, y_test)


def linear_probe(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    test_features: np.ndarray,
    test_labels: np.ndarray,
    *,
    num_classes: int,
    l2: float = 1e-4,
    steps: int = 300,
    learning_rate: float = 0.05,
) -> ProbeResult:
    """Fits a linear classifier on `train_features [N, d]` / `train_labels [N] int` and scores it.

    Args:
      test_features `[M, d]`, test_labels `[M] int`: the held-out evaluation set.
      num_classes: K; labels must lie in [0, K).
      l2: weight penalty on the (standardised-feature) weights; steps, learning_rate: Adam.
    """
    f_tr, f_te = np.asarray(train_features, np.float32), np.asarray(test_features, np.float32)
    y_tr, y_te = np.asarray(train_labels), np.asarray(test_labels)
    if f_tr.ndim != 2 or f_te.ndim != 2 or f_tr.shape[1] != f_te.shape[1]:
        raise ValueError(f"features must be [N, d] and [M, d]; got {f_tr.shape} and {f_te.shape}.")
    if len(f_tr) != len(y_tr) or len(f_te) != len(y_te):
        raise ValueError("features and labels disagree on the number of examples.")
    if len(f_tr) == 0 or len(f_te) == 0:
        raise ValueError("linear_probe needs non-empty train and test sets.")
    for y in (y_tr, y_te):
        if y.min() < 0 or y.max() >= num_classes:
            raise ValueError(f"labels must lie in [0, {num_classes}).")
    if not (np.isfinite(f_tr).all() and np.isfinite(f_te).all()):
        raise ValueError("features contain NaN or inf.")
    tr, te = _fit_probe(f_tr, y_tr.astype(np.int32), f_te, y_te.astype(np.int32),
                        num_classes=int(num_classes), steps=int(steps), l2=float(l2),
                        learning_rate=float(learning_rate))
    return ProbeResult(train_accuracy=float(tr), test_accuracy=float(te))
