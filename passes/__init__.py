"""FX graph passes: each takes a torch.fx.GraphModule and returns one (or the runtime IR)."""
