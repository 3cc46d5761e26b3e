"""ONNX export, FP16/INT8 graphs, verification against PyTorch and TensorRT builds (imports torch)."""
