"""Beyond one device: meshes, data-parallel DP-SGD, sharded scores and several processes.

Built on JAX's own sharding only (`jax.sharding.Mesh`, `NamedSharding`, `jax.shard_map`,
`jax.distributed`):

  mesh.py         local_mesh, shard_batch (pad and mask), replicate, device_report
  dpsgd.py        data-parallel DP-SGD: local clipping, psum of the clipped sums, noise once
  scores.py       loss, gradient norm, VoG and PLIS over a batch sharded across devices
  distributed.py  initialize: jax.distributed with gloo CPU collectives and a bounded wait
"""
