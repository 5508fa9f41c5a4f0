"""Shipped ONNX models and their manifest (installed as ``fer_runtime.models``)."""
