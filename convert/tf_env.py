"""Import TensorFlow quietly (its C++ start-up logging is noise at a terminal)."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # plain kernels: reproducible sums

import tensorflow as tf  # noqa: E402

tf.get_logger().setLevel("ERROR")
