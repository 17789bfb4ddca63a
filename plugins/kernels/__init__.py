"""NVIDIA's TensorRT BERT plugin kernels on a GPU, without TensorRT: built from a TensorRT OSS checkout."""
