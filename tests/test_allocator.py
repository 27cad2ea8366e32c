"""ecos_jax.utils.allocator: the glibc heap settings apply, and stop XLA re-mapping its buffers."""
import json
import os
import subprocess
import sys

import pytest

from ecos_jax.utils import allocator

# A jitted step with a 128 MiB temporary, run 10 times after 4 warm-ups: the minor page faults
# per call, in a fresh process (the setting is process-wide and must precede JAX's threads).
_PROBE = r"""
import json, resource
from ecos_jax.utils import allocator
applied = allocator.configure()
import jax, jax.numpy as jnp
x = jnp.ones((4096, 8192), jnp.float32)
f = jax.jit(lambda x: jnp.sum(jnp.cumsum(x, axis=1) * 2.0, axis=0))
for _ in range(4):
    f(x).block_until_ready()
r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    f(x).block_until_ready()
print(json.dumps({"applied": applied,
                  "faults": (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0) / 10}))
"""


def _probe(mode: str) -> dict:
    env = {**os.environ, allocator.ENV: mode, "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# supported(), not configure(): collecting this file must not tune the test process's heap.
@pytest.mark.skipif(not allocator.supported(), reason="glibc on Linux only")
def test_tuned_heap_reuses_pages_that_the_default_heap_remaps():
    system, tuned = _probe("system"), _probe("tuned")
    assert not system["applied"] and tuned["applied"]
    # glibc's default: each call's 128 MiB buffers are mmapped afresh (~70,000 faults per call,
    # every run); tuned, the heap is reused, but not on every call (the order in which the
    # worker threads free decides where the next block fits): 0 to 22,000 per call in 8 runs.
    assert system["faults"] > 50_000
    assert tuned["faults"] < system["faults"] / 2


def test_bad_choice_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(allocator, "_applied", None)
    monkeypatch.setenv(allocator.ENV, "jemalloc")
    with pytest.raises(ValueError, match="ECOS_JAX_MALLOC must be 'tuned' or 'system'"):
        allocator.configure()
