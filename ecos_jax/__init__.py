"""ecos_jax: privacy-aware collaborative data selection and valuation in JAX.

Three families of tools on the same JAX primitives:
  * ECOS sampling (`ecos_jax.ecos`, `ecos_jax.samplers`),
  * gradient-based data valuation under DP (`ecos_jax.valuation`, `ecos_jax.privacy`),
  * CoOpt collaborative unlabeled data optimisation (`ecos_jax.coopt`).
See ARCHITECTURE.md for the map, docs/algorithms.md for the algorithms and docs/privacy.md
for what each private release protects.
"""

__version__ = "0.1.0"
