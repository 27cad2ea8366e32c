"""Results as people read them: markdown/JSON tables and matplotlib figures.

Only the experiments layer (`ecos_jax.experiments`) imports this package; the pure packages
never draw or format. Modules are imported by name so that matplotlib loads only where a run
plots.
"""
