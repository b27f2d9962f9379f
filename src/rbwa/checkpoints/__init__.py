"""Checkpoints of any trainer and rbwa's snapshots: one reader and writer per format, the series they form, and
``rbwa merge`` (their average, written back in the format it came in).

May import: :mod:`rbwa.averaging`, :mod:`rbwa.io`, :mod:`rbwa.errors`. Never the trainer, the sweeps or the analysis.
"""
