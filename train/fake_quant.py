"""Quantization-aware training: activations rounded, while training, as static int8 quantization will round them.

:class:`FakeQuantInt8` rounds its input to the 256 int8 levels spanning ``[min(0, min x), max(0, max x)]``
of the batch (onnxruntime's asymmetric int8 activations; ``fer-quantize`` takes the range from its
calibration images instead, a wider range with a coarser step), and passes gradients straight through.
At inference it is the identity, so validation, evaluation and a run used as teacher see the float
network that ``fer-train int8-grid`` will keep. A model with these layers (``ModelConfig.act_quant``,
``fer-train fit --act-quant``) trains in float32: a 16-bit activation cannot hold 256 levels.
``fer-train int8-grid`` then drops the layers and puts the kernels on the int8 grid, giving the member
that ``fer-export`` and ``fer-quantize`` take.

The layers follow each activation (conv and dense). That is where onnxruntime rounds a ReLU, max-pool
network such as the students; after an average pool, or before a non-ReLU activation, it rounds
tensors these layers do not.
"""
from __future__ import annotations

from typing import Any

import keras
from keras import ops

LEVELS = 255  # int8: 256 values, 255 steps


@keras.saving.register_keras_serializable(package="fer_train")
class FakeQuantInt8(keras.layers.Layer):
    """In training, round to the int8 grid of the batch's range, with an identity gradient (straight-through);
    at inference, the identity."""

    def call(self, x: Any, training: bool | None = None) -> Any:
        if not training:
            return x
        x32 = ops.cast(x, "float32")
        lo = ops.minimum(ops.min(x32), 0.0)
        hi = ops.maximum(ops.max(x32), 0.0)
        scale = ops.maximum((hi - lo) / LEVELS, 1e-12)
        zero = ops.round(-lo / scale)
        q = (ops.clip(ops.round(x32 / scale) + zero, 0.0, LEVELS) - zero) * scale
        return ops.cast(x32 + ops.stop_gradient(q - x32), x.dtype)

    def compute_output_shape(self, input_shape: Any) -> Any:
        return input_shape
