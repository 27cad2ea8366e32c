"""Beyond one device: meshes, data-parallel DP-SGD, sharded scores and several processes.

Built on JAX's own sharding only (`jax.sharding.Mesh`, `NamedSharding`, `jax.shard_map`,
`jax.distributed`):

  mesh.py         local_mesh, shard_batch (pad and mask), replicate, device_report
"""
