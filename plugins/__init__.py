"""TensorRT BERT plugin specs, numpy references, and the CPU runner for fused graphs."""
