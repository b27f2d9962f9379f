"""From run directories to answers: statistics, findings (the claims put to the runs), post-hoc evaluation of a run's
snapshots, plots and the report.

May import: :mod:`rbwa.experiments` (the grids' labels), :mod:`rbwa.training` and everything below. Never the CLI.
"""
