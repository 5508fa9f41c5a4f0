"""Quantization-aware training: activations rounded as static int8 quantization will round them.

:class:`FakeQuantInt8` rounds its input to 256 levels spanning ``[min(0, min x), max(0, max x)]`` of the
batch (onnxruntime's asymmetric int8 activations, whose range ``fer-quantize`` calibrates the same way
over its calibration images), and passes gradients straight through. A model with these layers
(``ModelConfig.act_quant``) trains to be robust to that rounding; ``fer-train int8-grid`` then drops them
and puts the kernels on the int8 grid, giving the float member that ``fer-export`` and ``fer-quantize`` take.
"""
from __future__ import annotations

from typing import Any

import keras
from keras import ops

LEVELS = 255  # int8: 256 values, 255 steps


@keras.saving.register_keras_serializable(package="fer_train")
class FakeQuantInt8(keras.layers.Layer):
    """Round to the int8 grid of the batch's range in the forward pass; identity gradient (straight-through)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)

    def call(self, x: Any) -> Any:
        x32 = ops.cast(x, "float32")  # under bfloat16 the rounding is computed in float32
        lo = ops.minimum(ops.min(x32), 0.0)
        hi = ops.maximum(ops.max(x32), 0.0)
        scale = ops.maximum((hi - lo) / LEVELS, 1e-12)
        zero = ops.round(-lo / scale)
        q = (ops.clip(ops.round(x32 / scale) + zero, 0.0, LEVELS) - zero) * scale
        q = ops.stop_gradient(q - x32)
        return x + ops.cast(q, x.dtype)

    def compute_output_shape(self, input_shape: Any) -> Any:
        return input_shape
