"""Checkpoints of any trainer and rbwa's snapshots: one reader and writer per format, the series they form, and
``rbwa merge`` (SWA, LAWA or an EMA of a series, written back in the format it came in, loadable without rbwa).

- :mod:`~rbwa.checkpoints.snapshots`: rbwa's one snapshot format (``rbwa train``'s, the callbacks'), written and read;
- :mod:`~rbwa.checkpoints.format`: what every format shares (the reader/writer interface, loading torch files);
- one module per other format, each found by what a checkpoint holds (not by its file name):
  :mod:`~rbwa.checkpoints.hf_folder` (Hugging Face checkpoint folders), :mod:`~rbwa.checkpoints.lightning_file`
  (Lightning ``.ckpt``), :mod:`~rbwa.checkpoints.torch_file` (plain ``torch.save`` state dicts),
  :mod:`~rbwa.checkpoints.dcp_folder` (``torch.distributed.checkpoint`` folders);
- :mod:`~rbwa.checkpoints.series`: a series found and ordered by step; :mod:`~rbwa.checkpoints.averages`: the
  weights of each average over it; :mod:`~rbwa.checkpoints.merge`: the average made and written (``rbwa merge``,
  ``candidates``, ``reestimate_bn``).

May import: :mod:`rbwa.averaging`, :mod:`rbwa.io`, :mod:`rbwa.errors`. Never the trainer, the sweeps or the analysis.
"""
