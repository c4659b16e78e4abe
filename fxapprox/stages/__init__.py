"""`compress` as five stages a user can run one by one, each a module with one entry point `run`:

`capture.run(model, calib, config)` → `Captured` (graph, boundaries, calibration batches);
`calibrate.run(captured, config)` → `Calibration` (boundary moments);
`select.run(calibration, config)` → `Selection` (spans, and what a budget reached);
`fit.run(calibration, selection, config)` → `Plan` (fitted maps);
`rewrite.run(captured, plan)` → `CompressionResult` (the rewritten graph).
`fxapprox.compress` is these five calls in a row; export is separate (`fxapprox.export`).
"""
