"""Run directories -> the numbers and the claims: per-seed measures, summary rows and findings, no rendering.

Reads only what `rbwa reproduce` wrote (the experiment manifests ``DIR/<experiment>.json`` and each run's
config.json, metrics.jsonl, summary.json, and `rbwa posthoc`'s posthoc.csv); it never imports the trainer. The
paper's numbers come from :mod:`~rbwa.analysis.findings.summary`; every other number is computed from the runs.
:mod:`rbwa.analysis.report` turns these into figures, tables and text.

A comparison core and one module per experiment family, each readable alone:

- :mod:`~rbwa.analysis.findings.core`: runs and experiments, the per-seed measures, a Finding and ``compare``;
- :mod:`~rbwa.analysis.findings.summary`: a row per (setting, method), beside the paper's reported numbers;
- :mod:`~rbwa.analysis.findings.paper`: the paper's claims on its experiments (fig3, fig5, table1);
- :mod:`~rbwa.analysis.findings.controls`: the averaging family and the controls (variants, alternatives, writeback,
  controls);
- :mod:`~rbwa.analysis.findings.posthoc`: side averages chosen after training (posthoc, posthoc-cifar100);
- :mod:`~rbwa.analysis.findings.lm`: the language model (lm);
- :mod:`~rbwa.analysis.findings.tuned`: the language model tuned fairly (lm-tuned): each method's settings chosen on
  the other seeds.
"""

from __future__ import annotations

from typing import Any

from rbwa.analysis.findings.controls import control_claims
from rbwa.analysis.findings.core import Equivalence, Experiment, Finding
from rbwa.analysis.findings.lm import lm_claims
from rbwa.analysis.findings.paper import paper_claims
from rbwa.analysis.findings.posthoc import posthoc_claims
from rbwa.analysis.findings.tuned import tuned_claims


def claims(exp: Experiment, rows: list[dict[str, Any]],
           experiments: list[Experiment]) -> list[Finding | Equivalence | str]:
    """The claims that ``exp`` tests (``rows``: its summary rows; ``experiments``: every one of the report, for the
    post-hoc experiments' baselines), as findings, identities and plain lines."""
    if exp.name.startswith("posthoc"):
        return posthoc_claims(exp, experiments)
    if exp.name == "lm":
        return lm_claims(exp)
    if exp.name == "lm-tuned":
        return tuned_claims(exp)
    return paper_claims(exp, rows) + control_claims(exp)
