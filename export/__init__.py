"""fer_export: Keras ensemble -> ONNX forward and saliency graphs with a manifest. Installed from ``export/``.

Modules (TensorFlow is imported by the modules that need it, never by this package itself):

* :mod:`fer_export.twin` - gradient twins of each supported Keras layer; ``logits_fn(model)``,
  ``check_model(model)`` (ExportError naming an unsupported layer).
* :mod:`fer_export.graphs` - ensemble ``tf.function``s: ``make_forward_fn``, ``make_saliency_fn``
  (what is exported). TF's own reference (member logits, probabilities, gradients of the original
  models) is :mod:`fer_train.inference`.
* :mod:`fer_export.calibrate` - temperature scaling (numpy only): ``fit_temperature``, ``calibration_record``.
* :mod:`fer_export.convert` - tf2onnx conversion, ONNX metadata, checker + onnxruntime load.
* :mod:`fer_export.verify` - numeric comparison of the ONNX graphs with Keras/TF.
* :mod:`fer_export.members` - resolving runs/ensembles to members and their manifest facts.
* :mod:`fer_export.exporter` - ``export_models(...)``: the whole export, atomic.
* :mod:`fer_export.cli` - the ``fer-export`` command.
"""
from fer_export.errors import ExportError

__all__ = ["ExportError"]
