"""The functional MAML engine (torch.func), model configs, baselines, ONNX export."""
