"""fer_train: the training side (Keras models, fitting, evaluation, analysis). Installed from ``train/``."""
