"""Experiment orchestration: the loops over domains, seeds, methods and budgets, resume state,
progress and the results files. One module per experiment driver in the top-level
`experiments/` folder; the pure packages (privacy, valuation, samplers, ecos, coopt, models,
data) hold the math these loops call and never import from here.

Modules are imported by name (`from ecos_jax.experiments import selective_labeling`) so that a
driver pays only for what it runs.
"""
