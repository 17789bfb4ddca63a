"""bertrt: BERT question answering onto TensorRT through ONNX graph surgery."""

__version__ = "0.1.0"
