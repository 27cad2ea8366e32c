"""Test set-up: four host devices so sharding code is exercised on a CPU, and one data cache."""
import os

# Must happen before jax is imported anywhere in the test process.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One embedded-data cache for the whole suite (built once, ~5 s; the builder locks against
# concurrent preparation by pytest-xdist workers). Ignored by git.
os.environ.setdefault(
    "ECOS_JAX_DATA_DIR", os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".cache", "test_data"))
