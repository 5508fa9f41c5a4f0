"""fer_export: Keras ensemble -> ONNX forward and saliency graphs with a manifest. Installed from ``export/``."""
