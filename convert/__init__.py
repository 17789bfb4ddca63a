"""TF checkpoint -> ONNX through tf2onnx, ONNX intake onto the canonical contract, and the model zoo."""
