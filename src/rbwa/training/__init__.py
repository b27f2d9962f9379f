"""Training one run: the config (every default), the methods, the tasks, the loop, its checkpoint, distributed
set-up and provenance, and the run directory it writes (which the sweeps and the analysis read); ``rbwa sample``.

May import: :mod:`rbwa.checkpoints`, :mod:`rbwa.data`, :mod:`rbwa.models`, :mod:`rbwa.averaging`, :mod:`rbwa.io`,
:mod:`rbwa.errors`. Never the sweeps, the analysis or the CLI.
"""
