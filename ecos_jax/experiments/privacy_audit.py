"""The privacy-audit experiment: every mechanism at several ε, its claim beside its bound.

For each mechanism in `config.mechanisms` and each claimed ε in `config.epsilons`, the real
release is audited (`ecos_jax.privacy.audit.AUDITS`) and, with `config.controls`, so is its
broken control. The score release makes two releases (per sample and site summary), so it is
configured at ε/2 each and its ledger claims ε. `run(config, workdir)` is the whole
experiment; `experiments/privacy_audit.py` parses flags and calls it.

Writes to `workdir`: results.json (config, one record per audit, machine notes),
results.md (claimed ε vs lower bound per mechanism and ε, controls beside), and
privacy_audit.png (lower bound against claim, with the diagonal a correct release stays under).
"""

from __future__ import annotations

import logging
import os
import platform
import time

import ml_collections

from ecos_jax.parallel.mesh import device_report
from ecos_jax.privacy import audit
from ecos_jax.reporting import plots, tables
from ecos_jax.utils import io, overrides
from ecos_jax.utils.errors import ConfigError

log = logging.getLogger(__name__)

# Configured ε per claimed ε: the score release composes two releases of ε/2 each.
_PER_CLAIM = {"vog_release": 0.5}


def _parse(value, cast=float) -> list:
    if isinstance(value, str):
        return [cast(v) for v in value.split(",") if v.strip()]
    return [cast(v) for v in value]


def _kwargs(c: ml_collections.ConfigDict, name: str) -> dict:
    common = dict(trials=int(c.trials), delta=float(c.privacy.delta), confidence=float(c.confidence),
                  strategy=c.strategy)
    return common | dict(c.mechanism[name])


def _row(r: audit.AuditResult, control: audit.AuditResult | None) -> list:
    def eps(v):
        return f"{v:.3f}"

    claims = " / ".join(f"{r.claims[a]:.3f}" if a in r.claims else "n/a" for a in ("pld", "rdp"))
    row = [r.mechanism, eps(r.claimed_epsilon), claims, eps(r.bound.epsilon),
           "yes" if r.passed else "**NO**", f"{r.bound.max_epsilon:.2f}", r.trials]
    if control is None:
        return row + ["", "", ""]
    return row + [control.control, eps(control.bound.epsilon),
                  "caught" if control.passed else "**missed**"]


def run(c: ml_collections.ConfigDict, workdir: str) -> dict:
    """Runs every audit; returns (and writes) the results dict."""
    t_start = time.perf_counter()
    mechanisms = _parse(c.mechanisms, str)
    unknown = [m for m in mechanisms if m not in audit.AUDITS]
    if unknown:
        raise ConfigError(f"unknown mechanisms {unknown}; choose from {sorted(audit.AUDITS)}.")
    try:
        epsilons = list(overrides.floats(c.epsilons, "epsilons"))
    except ValueError as e:
        raise ConfigError(str(e)) from e
    if not epsilons or any(not e > 0 for e in epsilons):
        raise ConfigError(f"epsilons must be positive claims, got {c.epsilons!r}.")
    os.makedirs(workdir, exist_ok=True)
    records, rows = [], []
    for name in mechanisms:
        fn, kwargs = audit.AUDITS[name], _kwargs(c, name)
        for eps in epsilons:
            target = eps * _PER_CLAIM.get(name, 1.0)
            real = fn(target, **kwargs)
            control = fn(target, control=True, **kwargs) if c.controls else None
            for r in (real, control):
                if r is not None:
                    records.append(r.to_dict())
                    log.info("%s ε=%g%s: claim %.3f, bound %.3f (%s, %.1f s)", name, eps,
                             f" control [{r.control}]" if r.control else "", r.claimed_epsilon,
                             r.bound.epsilon, "pass" if r.passed else "FAIL", r.seconds)
            rows.append(_row(real, control))

    header = ["mechanism", "claimed ε", "claims PLD / RDP", "lower bound", "bound ≤ claim",
              "resolution", "trials / side", "control", "control bound", "control > claim"]
    real_ok = all(r["passed"] for r in records if r["control"] is None)
    controls_ok = all(r["passed"] for r in records if r["control"] is not None)
    md = (f"# Privacy audit\n\nLower bounds at {c.confidence:.0%} confidence, δ = {c.privacy.delta:g}, "
          f"threshold strategy '{c.strategy}'. 'claimed ε' is the smallest ε the release's own "
          "ledger reports; 'resolution' is the largest bound these trial counts can give. A "
          "correct release has bound ≤ claim; each control (deliberately broken) must exceed "
          "every accountant's claim.\n\n" + tables.markdown_table(header, rows)
          + f"\nEvery real release under its claim: {'yes' if real_ok else 'NO'}. "
          f"Every control caught: {'yes' if controls_ok else 'NO' if c.controls else 'not run'}.\n")
    out = {"config": c.to_dict(), "records": records, "all_real_below_claim": real_ok,
           "all_controls_caught": controls_ok if c.controls else None,
           "seconds": round(time.perf_counter() - t_start, 1),
           "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
           "device_report": device_report()}
    io.write_json(os.path.join(workdir, "results.json"), out)
    io.write_text(os.path.join(workdir, "results.md"), md)
    plots.audit_bounds(records, os.path.join(workdir, "privacy_audit.png"))
    log.info("wrote %s (%.0f s)", workdir, out["seconds"])
    return out


__all__ = ["run"]
