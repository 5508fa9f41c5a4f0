"""Validation in float32 whatever the training precision.

A run trained in bfloat16 or float16 is still chosen (best.keras, early stopping, the plateau schedule, SWA's
score) by the accuracy its float32 export will have: a float32 twin of the model, given the training model's
weights, does the validation pass. The rows of runs trained on machines with and without bf16 then compare;
history.csv says so in its ``val_precision`` column.
"""
from __future__ import annotations

from typing import Any

from fer_train.models import ModelConfig, build_model
from fer_train.runs import VALIDATION_PRECISION


class Float32Validation:
    """``scores(model)``: loss and accuracy of ``model``'s weights on ``dataset``, computed in float32.

    Build it in the distribution strategy's scope. Under a float32 policy the model validates itself.
    """

    def __init__(self, model_cfg: ModelConfig, dataset: Any, precision: str) -> None:
        import keras

        self.dataset = dataset
        self.twin: Any = None
        if precision != VALIDATION_PRECISION:
            policy = keras.mixed_precision.global_policy()
            keras.mixed_precision.set_global_policy(VALIDATION_PRECISION)
            try:
                self.twin = build_model(model_cfg)
            finally:
                keras.mixed_precision.set_global_policy(policy)
            self.twin.compile(loss=keras.losses.CategoricalCrossentropy(), metrics=["accuracy"])

    def scores(self, model: Any) -> dict[str, float]:
        """{"loss", "accuracy"} of ``model``'s current weights (a compiled model with the config's layers)."""
        if self.twin is not None:
            self.twin.set_weights(model.get_weights())
            model = self.twin
        s = model.evaluate(self.dataset, verbose=0, return_dict=True)
        return {"loss": float(s["loss"]), "accuracy": float(s["accuracy"])}

    def callback(self) -> Any:
        """A Keras callback that puts ``val_loss`` and ``val_accuracy`` into each epoch's logs; it must come
        before the callbacks that read them."""
        import keras

        validation = self

        class _Validate(keras.callbacks.Callback):
            def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
                if logs is not None:
                    s = validation.scores(self.model)
                    logs["val_loss"], logs["val_accuracy"] = s["loss"], s["accuracy"]

        return _Validate()
