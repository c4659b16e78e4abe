"""`compress` as stages a user can run one by one, each a module with one entry point `run`:

`capture.run(model, calib, config)` → `Captured` (graph, boundaries, calibration batches);
`calibrate.run(captured, config)` → `Calibration` (boundary moments);
`select.run(calibration, config)` → `Selection` (spans, and what a budget reached);
`fit.run(calibration, selection, config)` → `Plan` (fitted maps);
`rewrite.run(captured, plan)` → `CompressionResult` (the rewritten graph);
`refine.run(model, captured, result, config)` → the result with its replacements trained at the
output (only when the config asks: `refine="output"`, `transform="mlp"`; else unchanged).
`fxapprox.compress` is these calls in a row; export is separate (`fxapprox.export`).
"""
