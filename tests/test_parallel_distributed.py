"""Several processes: jax.distributed on localhost (two CPU processes, gloo collectives) gives
the one-process results, and a coordinator that does not answer is a clear, bounded error.

Run as a script (`python tests/test_parallel_distributed.py worker ...`) it is one worker of
that run; only loopback addresses are used.
"""
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_coordinator_that_does_not_answer_is_a_clear_error_within_the_timeout():
    from ecos_jax.parallel import distributed

    address = f"127.0.0.1:{free_port()}"  # bound and released: nobody listens there
    # JAX's own client would abort this process (a C++ CHECK) after its timeout instead.
    with pytest.raises(distributed.CoordinatorUnreachable,
                       match=f"no JAX coordinator answered at {address} within 1.5 s"):
        distributed.initialize(address, num_processes=2, process_id=1, timeout_s=1.5)


def test_initialize_rejects_bad_arguments():
    from ecos_jax.parallel import distributed

    with pytest.raises(ValueError, match="host:port"):
        distributed.initialize("localhost", num_processes=2, process_id=1)
    with pytest.raises(ValueError, match="process_id must be in"):
        distributed.initialize("127.0.0.1:1234", num_processes=2, process_id=2)
    with pytest.raises(ValueError, match="timeout_s"):
        distributed.initialize("127.0.0.1:1234", num_processes=2, process_id=1, timeout_s=0)


def test_initialize_from_env_needs_all_three_variables():
    from ecos_jax.parallel import distributed

    assert distributed.initialize_from_env({}) is None  # a single-process run: nothing to do
    with pytest.raises(ValueError, match="missing"):
        distributed.initialize_from_env({"ECOS_JAX_COORDINATOR": "127.0.0.1:1234"})
    with pytest.raises(ValueError, match="must be numbers"):
        distributed.initialize_from_env({"ECOS_JAX_COORDINATOR": "127.0.0.1:1234",
                                         "ECOS_JAX_NUM_PROCESSES": "two",
                                         "ECOS_JAX_PROCESS_ID": "1"})
    address = f"127.0.0.1:{free_port()}"
    with pytest.raises(distributed.CoordinatorUnreachable):
        distributed.initialize_from_env({"ECOS_JAX_COORDINATOR": address,
                                         "ECOS_JAX_NUM_PROCESSES": "2", "ECOS_JAX_PROCESS_ID": "1",
                                         "ECOS_JAX_TIMEOUT_S": "0.5"})


def _launch(coordinator, num_processes, process_id, local_devices, out):
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={local_devices}",
           "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT}
    return subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "worker", coordinator, str(num_processes),
         str(process_id), str(out)], env=env, cwd=ROOT, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow  # two cold JAX processes compiling DP-SGD, VoG and k-means: ~1 min loaded
def test_two_processes_equal_one_process(tmp_path):
    ref = _launch("-", 1, 0, 4, tmp_path / "ref.npz")
    address = f"127.0.0.1:{free_port()}"
    workers = [_launch(address, 2, i, 2, tmp_path / f"p{i}.npz") for i in range(2)]
    for proc in [ref, *workers]:
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, out[-3000:]
    want = np.load(tmp_path / "ref.npz")
    assert int(want["devices"]) == 4 and int(want["processes"]) == 1
    for i in range(2):
        got = np.load(tmp_path / f"p{i}.npz")
        assert int(got["devices"]) == 4 and int(got["processes"]) == 2 and int(got["index"]) == i
        assert int(got["pool_processes"]) == 2  # the k-means pool spans both processes
        for name in ("vog", "batch_sizes"):
            np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-6, err_msg=name)
        # k-means on a pool over 2 processes is bit-identical to one process (fixed segments).
        for name in ("centroids", "assignments", "inertia"):
            np.testing.assert_array_equal(got[name], want[name], err_msg=name)
        for name in [k for k in want.files if k.startswith("param_")]:
            np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-6, err_msg=name)


def _worker(coordinator, num_processes, process_id, out):
    """One process: DP-SGD steps, VoG scores and a k-means fit on a mesh over all processes."""
    import jax
    import optax

    from ecos_jax.models import get_model
    from ecos_jax.parallel import distributed, scores
    from ecos_jax.parallel import mesh as mesh_lib
    from ecos_jax.privacy.dpsgd import DPSGDConfig
    from ecos_jax.privacy.dpsgd import train as dp_train
    from ecos_jax.samplers.kmeans import kmeans
    from ecos_jax.samplers.pool import Pool

    if coordinator != "-":
        distributed.initialize(coordinator, num_processes, process_id, timeout_s=60)
    mesh = mesh_lib.global_mesh()
    rng = np.random.default_rng(0)  # every process holds the same full data
    x = rng.normal(size=(40, 6)).astype(np.float32)
    y = rng.integers(0, 3, 40).astype(np.int32)
    model = get_model("mlp", 3, hidden=(8,))
    params = model.init(jax.random.key(0), x[:1])
    config = DPSGDConfig(dataset_size=40, batch_size=10, l2_norm_clip=1.0, noise_multiplier=1.0)
    run = dp_train(model, params, x, y, config, optax.sgd(0.2), steps=3, mesh=mesh, seed=1,
                   accumulation_steps=2, log_every=1)
    leaves = {f"param_{i}": np.asarray(a.addressable_data(0))
              for i, a in enumerate(jax.tree.leaves(run.params))}
    checkpoints = [model.init(jax.random.key(i), x[:1]) for i in range(3)]
    vog = scores.vog_scores(model.apply, checkpoints, x[:13], y[:13], mesh=mesh)
    # k-means over a pool sharded across the processes: its mesh holds every process's devices
    # (each process passes the same full pool and transfers the row blocks of its own devices),
    # streamed in two chunks of one 2,048-row segment per device, so every reduction runs
    # across both processes.
    pool = rng.normal(size=(12000, 4)).astype(np.float32)
    spread = len({d.process_index for d in Pool(pool, devices=jax.devices(), workers=1).devices})
    fit = kmeans(jax.random.key(0), pool, 4, iters=5, chunk_size=8192, devices=jax.devices(),
                 workers=1)
    np.savez(out, vog=vog, centroids=np.asarray(fit.centroids),
             assignments=np.asarray(fit.assignments), inertia=fit.inertia,
             pool_processes=spread,
             batch_sizes=np.array([h["batch_size"] for h in run.history]),
             devices=jax.device_count(), processes=jax.process_count(),
             index=jax.process_index(), **leaves)


if __name__ == "__main__" and sys.argv[1:2] == ["worker"]:
    _worker(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
