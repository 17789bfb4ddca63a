"""Graph passes that fuse a canonical BERT into TensorRT plugin nodes."""
