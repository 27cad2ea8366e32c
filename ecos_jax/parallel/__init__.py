"""Beyond one device: meshes, data-parallel DP-SGD, sharded scores and several processes.

Built on JAX's own sharding only (`jax.sharding.Mesh`, `NamedSharding`, `jax.shard_map`,
`jax.distributed`):

  mesh.py         local_mesh, shard_batch (pad and mask), replicate, device_report
  dpsgd.py        the sharded pieces of DP-SGD (privacy.dpsgd uses them): local clipping, one psum
  scores.py       loss, gradient norm, VoG and PLIS over a batch sharded across devices
  distributed.py  initialize: jax.distributed with gloo CPU collectives and a bounded wait
  backend.py      per_example_paths: the per-example gradient path of each backend, and why
"""
