"""The GPU check's last step: every piece it must show, named when it is missing.

    python benchmarks/device_check_summary.py SUMMARY_TSV OUT_DIR TINY

SUMMARY_TSV has one `name<TAB>exit<TAB>seconds` line per step of benchmarks/device_check.sh;
OUT_DIR holds their JSON. Writes OUT_DIR/summary.json ({"steps", "missing", "warnings"}),
prints one `MISSING:` line per gap and exits 1 if there is any: a step that failed, timed out or
wrote no JSON; no DP / non-private ratio; jax_privacy not installed or its step not run
(required: `pip install 'ecos_jax[bench]'`). No Opacus rows is a `WARNING:` only (optional;
TINY=1, the CPU smoke test, runs without Opacus on purpose).
"""

from __future__ import annotations

import json
import os
import sys


def check(summary_tsv: str, out: str, tiny: bool) -> dict:
    """{"steps": {name: {exit, seconds, timed_out}}, "missing": [...], "warnings": [...]}."""
    rows = [line.rstrip("\n").split("\t") for line in open(summary_tsv) if line.strip()]
    steps = {name: {"exit": int(rc), "seconds": int(s), "timed_out": rc in ("124", "137")}
             for name, rc, s in rows}
    missing, warnings = [], []
    for name, step in steps.items():
        if step["exit"]:
            missing.append(f"{name}: exit {step['exit']}"
                           + (" (timed out)" if step["timed_out"] else "")
                           + f", see {out}/{name}.log")
        if not os.path.exists(os.path.join(out, f"{name}.json")):
            missing.append(f"{name}: no {name}.json written")
    try:
        with open(os.path.join(out, "dpsgd.json")) as f:
            dp = json.load(f)
        results = [r for per_model in dp["models"].values() for r in per_model.values()]
    except (OSError, KeyError, ValueError):
        results = []  # already named above: the dpsgd step wrote no (readable) JSON
    for r in results:
        batch, ratios = r.get("batch_size"), r.get("ratios", {})
        if "dp_over_fastest_nonprivate" not in ratios:
            missing.append(f"dpsgd: no DP / non-private ratio at B = {batch}")
        peer = r.get("jax_privacy", {})
        if not peer.get("available"):
            missing.append("dpsgd: jax_privacy is not installed, so there is no ratio to it "
                           f"({peer.get('reason', '')}); pip install 'ecos_jax[bench]'")
        elif "dp_throughput_over_jax_privacy" not in ratios:
            missing.append(f"dpsgd: jax_privacy is installed but its step did not run at B = {batch}")
        torch = r.get("torch", {})
        if not torch.get("available") and not tiny:
            warnings.append(f"dpsgd: no Opacus rows ({torch.get('reason', 'torch/opacus missing')})")
    return {"steps": steps, "missing": sorted(set(missing)), "warnings": sorted(set(warnings))}


def main(argv: list[str]) -> int:
    summary_tsv, out, tiny = argv[0], argv[1], argv[2] == "1"
    summary = check(summary_tsv, out, tiny)
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print(json.dumps(summary["steps"]))
    for line in summary["warnings"]:
        print("WARNING:", line)
    for line in summary["missing"]:
        print("MISSING:", line)
    print("device check:", "INCOMPLETE" if summary["missing"] else "complete", f"(JSON under {out})")
    return 1 if summary["missing"] else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
