"""ONNX export, parity validation, benchmarking and FLOP counts (installed as `fxapprox.export`)."""
