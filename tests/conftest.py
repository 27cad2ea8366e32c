"""Test set-up: four host devices so sharding code is exercised on a CPU, and one data cache."""
import os

# Must happen before jax is imported anywhere in the test process.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One embedded-data cache for the whole suite (built once, ~5 s; the builder locks against
# concurrent preparation by pytest-xdist workers). Ignored by git.
os.environ.setdefault(
    "ECOS_JAX_DATA_DIR", os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".cache", "test_data"))
# XLA compilation dominates the end-to-end tests on a CPU (e.g. 44 of 77 s in the client-labelling
# one); the persistent cache lets the two xdist workers and later tests reuse each other's
# programs. Inside the repository, so a fresh clone starts cold (what CI measures).
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR", os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".cache", "jax_compilation"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.3")

# glibc's default heap, unlike the drivers (`ecos_jax.utils.allocator`): the tests' arrays stay
# under the 32 MiB mmap threshold where the tuned heap gains nothing, and the one cold-clone
# run of the suite with it took 9 min 57 s against 8 min 57 s the session before (not
# explained). tests/test_allocator.py and the driver subprocesses run the tuned heap.
