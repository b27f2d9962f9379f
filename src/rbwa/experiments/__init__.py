"""Sweeps: the paper's experiments as named grids of runs, the resumable runner, the launchers (local, Ray, Slurm)
and the migration of old sweeps.

May import: :mod:`rbwa.training` and everything below it. Never the analysis or the CLI.
"""
