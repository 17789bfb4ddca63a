"""INT8: calibration data, range statistics, calibration caches and Q/DQ graphs."""
