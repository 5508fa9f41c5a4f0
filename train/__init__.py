"""fer_train: the training side (Keras models, fitting, evaluation, ensembles, inference). Installed from ``train/``."""
