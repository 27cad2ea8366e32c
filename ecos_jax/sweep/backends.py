"""Where a sweep's jobs run: here (one at a time or over a local pool) or on a Ray cluster.

Each backend takes the jobs and yields every job's outcome (`targets.execute`'s dict) as it
finishes, in whatever order they finish; the runner records each one before the next arrives.
No scheduling of our own: the local pool is `concurrent.futures`, the cluster is Ray's tasks.

  local, workers=1   inline, in order (a driver job is still its own subprocess)
  local, workers>1   driver jobs: a thread per running job, each waiting on its subprocess (the
                     work is in the subprocesses); function jobs: a spawn-started process pool
                     (JAX does not survive fork)
  ray                one Ray task per job, declaring `num_cpus` / `num_gpus`; Ray sets
                     CUDA_VISIBLE_DEVICES for a task with GPUs and the driver subprocess inherits it.
                     Every node must see the repository (for driver jobs) at the same path;
                     a point's results.json comes back with its outcome, so the merged table
                     needs no shared filesystem (the point's other files stay on its node).
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
from collections.abc import Iterator, Sequence

from ecos_jax.sweep.targets import Job, execute

BACKENDS = ("local", "ray")


def local(jobs: Sequence[Job], workers: int = 1) -> Iterator[dict]:
    """Outcomes of `jobs` run here, `workers` at a time."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}.")
    if workers == 1 or len(jobs) <= 1:
        for job in jobs:
            yield execute(job)
        return
    if all(j.argv is not None for j in jobs):
        pool = cf.ThreadPoolExecutor(workers)
    else:
        pool = cf.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    with pool:
        futures = [pool.submit(execute, j) for j in jobs]
        for f in cf.as_completed(futures):
            yield f.result()


def ray(jobs: Sequence[Job], *, address: str | None = None, cpus_per_point: float = 1.0,
        gpus_per_point: float = 0.0) -> Iterator[dict]:
    """Outcomes of `jobs`, each a Ray task needing `cpus_per_point` CPUs and `gpus_per_point`
    GPUs, on the cluster at `address` ('auto', 'ray://host:10001', ...; None: the instance
    this process already started, else a new local one)."""
    import ray as ray_lib  # noqa: PLC0415  (an optional extra: pip install 'ecos_jax[ray]')

    if not ray_lib.is_initialized():
        ray_lib.init(address=address)
    task = ray_lib.remote(num_cpus=cpus_per_point, num_gpus=gpus_per_point, max_retries=0)(execute)
    pending = [task.remote(j) for j in jobs]
    while pending:
        done, pending = ray_lib.wait(pending, num_returns=1)
        yield ray_lib.get(done[0])
