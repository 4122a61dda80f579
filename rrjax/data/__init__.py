"""Data: sources, deterministic views and multi-host loaders (SPEC §4, §6).

- `sources`: random-access sources (image folders, tfds, prepared records, out-of-class)
  and `build_source(config.data, split)`.
- `views`: view k of example i is a pure function of (image, seed, i, k).
- `pipeline`: `TrainLoader` (sharded per process, shuffled per epoch, resumable) and
  `eval_batches` (every example exactly once, padded, with a validity mask).
- `prepare`: `python -m rrjax.data.prepare` writes the array_record format.
- `synthetic`: generated image folders for tests and smoke runs.
"""
