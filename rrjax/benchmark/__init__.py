"""The robust-CLIP benchmark: zero-shot accuracy of any CLIP on the field's datasets, clean,
corrupted and under APGD, in CLIP_benchmark's records and FARE's table
(`python -m rrjax.benchmark --help`).

Modules: `models` (any CLIP, rrjax workdir or export as image/text embedders),
`datasets` (tfds names and image folders, cut by the model's own preprocessing), `prompts`
(class names and templates), `run` (conditions and the work), `records` (results.jsonl,
table.md, the robust-accuracy plot).
"""
