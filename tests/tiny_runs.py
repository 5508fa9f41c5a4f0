"""The tiny network and quick training settings that the fit tests train on the committed fixture rows."""
from __future__ import annotations

from pathlib import Path

from fer_train.fit import TrainConfig
from fer_train.models import ModelConfig
from fer_train.pipeline import AugmentConfig

FIX = Path(__file__).parent / "fixtures" / "fer2013_small.csv.gz"
TINY = ModelConfig(filters=8, blocks=2, convs_per_block=1, units=32, conv_dropout=0.0, dense_dropout=0.0)


def tiny_train_config(**kw) -> TrainConfig:
    """3 epochs at a constant rate, no warm-up, no augmentation, on FIX; ``kw`` overrides."""
    base = dict(data=str(FIX), epochs=3, batch_size=32, lr=2e-3, schedule="constant", warmup_epochs=0,
                augment=AugmentConfig(enabled=False))
    base.update(kw)
    return TrainConfig(**base)
