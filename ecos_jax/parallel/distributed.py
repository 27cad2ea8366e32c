"""Several processes (or hosts) as one JAX program: `jax.distributed` with a bounded wait.

    # process i of n, each with its own devices; process 0 also hosts the coordinator
    >>> initialize("10.0.0.1:8476", num_processes=n, process_id=i, timeout_s=60)
    >>> mesh = mesh.global_mesh()          # every device of every process, axis "data"

After `initialize`, `jax.devices()` lists the devices of every process, a mesh over them spans
the processes, and collectives inside `jit`/`shard_map` (the psum of data-parallel DP-SGD)
cross process boundaries. On CPU the cross-process collectives are gloo's
(`jax_cpu_collectives_implementation="gloo"`, set here before the backend starts); GPUs and
TPUs use their own (NCCL, ICI) and ignore that setting.

A coordinator that does not answer: JAX's own client waits `initialization_timeout` and then
aborts the whole process (a C++ CHECK failure, not a Python exception). So before handing over
to JAX, a process other than 0 opens (and closes) a TCP connection to the coordinator, retrying
until `timeout_s` has passed, and raises `CoordinatorUnreachable` (a `TimeoutError`) naming the
address if nothing accepted. Process 0 is the coordinator: if another process never registers,
JAX aborts process 0 after `timeout_s` (its timeout, stated, not ours to turn into an exception).
"""

from __future__ import annotations

import socket
import time

import jax

DEFAULT_TIMEOUT_S = 300


class CoordinatorUnreachable(TimeoutError):
    """No coordinator accepted a connection at the given address within the timeout."""


def parse_address(address: str) -> tuple[str, int]:
    """`"host:port"` -> (host, port); a missing or bad port is a ValueError."""
    host, sep, port = str(address).rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"coordinator_address must be 'host:port', got {address!r}.")
    return host.strip("[]"), int(port)


def wait_for_coordinator(address: str, timeout_s: float, *, poll_s: float = 0.2) -> float:
    """Blocks until a TCP connection to `address` succeeds; returns the seconds waited.

    Raises `CoordinatorUnreachable` once `timeout_s` seconds have passed without one.
    """
    host, port = parse_address(address)
    start = time.monotonic()
    deadline = start + float(timeout_s)
    last = None
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        try:
            with socket.create_connection((host, port), timeout=max(min(left, 2.0), 0.05)):
                return time.monotonic() - start
        except OSError as e:  # refused, unreachable, timed out: try again until the deadline
            last = e
            time.sleep(min(poll_s, max(deadline - time.monotonic(), 0.0)))
    raise CoordinatorUnreachable(
        f"no JAX coordinator answered at {host}:{port} within {timeout_s:g} s ({last}); start "
        "process 0 first, check the address and port, or raise timeout_s.")


def initialize(coordinator_address: str, num_processes: int, process_id: int, *,
               timeout_s: float = DEFAULT_TIMEOUT_S, local_device_ids=None) -> dict:
    """`jax.distributed.initialize` with gloo CPU collectives and a bounded wait.

    Args:
      coordinator_address: "host:port" of process 0 (which binds it); the same for every process.
      num_processes: n >= 1 processes in the run; process_id: this one's index in [0, n).
      timeout_s: how long to wait for the coordinator (processes > 0, then
        `CoordinatorUnreachable`) and for every process to register (JAX's own timeout).
      local_device_ids: restrict this process to some local devices (e.g. one GPU each).

    Returns:
      `{"process_index", "process_count", "local_devices", "devices"}` once connected.

    Must run before anything touches a JAX backend (any computation or `jax.devices()`).
    """
    if isinstance(num_processes, bool) or int(num_processes) != num_processes or num_processes < 1:
        raise ValueError(f"num_processes must be a positive integer, got {num_processes!r}.")
    if isinstance(process_id, bool) or int(process_id) != process_id \
            or not 0 <= process_id < num_processes:
        raise ValueError(f"process_id must be in [0, {num_processes}), got {process_id!r}.")
    if not float(timeout_s) > 0:
        raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}.")
    parse_address(coordinator_address)
    if process_id != 0:
        wait_for_coordinator(coordinator_address, timeout_s)
    # Without this, CPU computations that span processes fail: the default CPU client has no
    # cross-process collectives. Harmless on GPU/TPU.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address, num_processes=int(num_processes),
                               process_id=int(process_id), local_device_ids=local_device_ids,
                               initialization_timeout=max(1, int(round(float(timeout_s)))))
    return {"process_index": jax.process_index(), "process_count": jax.process_count(),
            "local_devices": jax.local_device_count(), "devices": jax.device_count()}


ENV_VARS = ("ECOS_JAX_COORDINATOR", "ECOS_JAX_NUM_PROCESSES", "ECOS_JAX_PROCESS_ID")


def initialize_from_env(environ=None, *, timeout_s: float | None = None) -> dict | None:
    """`initialize` from ECOS_JAX_COORDINATOR ("host:port"), ECOS_JAX_NUM_PROCESSES and
    ECOS_JAX_PROCESS_ID (and ECOS_JAX_TIMEOUT_S, seconds); None, doing nothing, when none is set.

    One command per process, the same but for the process id, e.g. on two hosts:

        ECOS_JAX_COORDINATOR=10.0.0.1:8476 ECOS_JAX_NUM_PROCESSES=2 ECOS_JAX_PROCESS_ID=0 python run.py
        ECOS_JAX_COORDINATOR=10.0.0.1:8476 ECOS_JAX_NUM_PROCESSES=2 ECOS_JAX_PROCESS_ID=1 python run.py
    """
    import os

    env = os.environ if environ is None else environ
    present = [name for name in ENV_VARS if env.get(name)]
    if not present:
        return None
    if len(present) != len(ENV_VARS):
        missing = [name for name in ENV_VARS if name not in present]
        raise ValueError(f"set all of {ENV_VARS} to run on several processes; missing {missing}.")
    try:
        num, pid = int(env["ECOS_JAX_NUM_PROCESSES"]), int(env["ECOS_JAX_PROCESS_ID"])
        timeout = float(env.get("ECOS_JAX_TIMEOUT_S") or timeout_s or DEFAULT_TIMEOUT_S)
    except ValueError as e:
        raise ValueError(f"ECOS_JAX_NUM_PROCESSES, ECOS_JAX_PROCESS_ID and ECOS_JAX_TIMEOUT_S must be "
                         f"numbers: {e}") from None
    return initialize(env["ECOS_JAX_COORDINATOR"], num, pid, timeout_s=timeout)
