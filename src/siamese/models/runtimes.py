"""What runs a served encoder (``serve.runtime``, ``--runtime``): its own module, free of torch,
so the CLI can offer the choices without loading the models."""

# torch: the PyTorch network; onnx: onnxruntime on the package's ONNX export (models.onnx)
RUNTIMES = ("torch", "onnx")
