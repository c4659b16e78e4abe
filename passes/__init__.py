"""Graph passes over torch.fx GraphModules (installed as `fxapprox.passes`)."""
