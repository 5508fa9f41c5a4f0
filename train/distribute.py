"""tf.distribute for ``fer-train fit --strategy``: one device, every local GPU, or several machines.

``multiworker`` is ``tf.distribute.MultiWorkerMirroredStrategy`` configured by the standard ``TF_CONFIG``
environment variable (the same command on every worker, each with its own ``task.index``). Worker 0 (or the
``chief`` task, where the cluster has one) is the chief: it alone writes the run directory. Every other worker
runs the same callbacks and saves (Keras' collective ops need all workers to take part) into a private
temporary copy of the run, which is deleted when the process ends.
"""
from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

STRATEGIES = ("default", "mirrored", "multiworker")
TF_CONFIG = "TF_CONFIG"


def check_tf_config(env: dict[str, str] | None = None) -> dict[str, Any]:
    """The parsed ``TF_CONFIG``, or a ValueError saying what a multi-worker run needs."""
    raw = (os.environ if env is None else env).get(TF_CONFIG, "")
    example = ('TF_CONFIG=\'{"cluster": {"worker": ["host0:port", "host1:port"]}, '
               '"task": {"type": "worker", "index": 0}}\'')
    if not raw.strip():
        raise ValueError(f"--strategy multiworker needs the {TF_CONFIG} environment variable on every worker, e.g. "
                         f"{example}")
    try:
        conf = json.loads(raw)
        workers = conf["cluster"]["worker"]
        task = conf["task"]
        kind, index = task["type"], int(task["index"])
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{TF_CONFIG} is not a cluster spec with cluster.worker and task.type/index ({e}); "
                         f"expected {example}") from None
    if kind == "worker" and not 0 <= index < len(workers):
        raise ValueError(f"{TF_CONFIG}: task.index {index} is not one of the {len(workers)} workers")
    return conf


def make_strategy(name: str):
    """The tf.distribute strategy called ``name`` (:data:`STRATEGIES`). Create it before any other TensorFlow
    call: MultiWorkerMirroredStrategy must configure the runtime first."""
    import tensorflow as tf

    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; choose from {', '.join(STRATEGIES)}")
    if name == "multiworker":
        check_tf_config()
        return _multi_worker_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def _multi_worker_strategy():
    """MultiWorkerMirroredStrategy with a ``reduce`` that takes what Keras 3 gives it.

    Keras 3 (3.15 here; keras-team/keras#20585) calls ``strategy.reduce`` on a multi-worker strategy in two
    ways MultiWorkerMirroredStrategy refuses: on a whole (x, y, weights) batch tuple before building the model
    ("Attempt to convert a value (PerReplica ...) to a Tensor"), and with ``axis=0`` on each replica's scalar
    loss and metrics ("Invalid reduction dimension 0 for input with 0 dimensions"). Here a structure is reduced
    tensor by tensor, and a scalar across the replicas only, which is what Keras means in both cases.
    """
    import tensorflow as tf

    base = tf.distribute.MultiWorkerMirroredStrategy

    class KerasMultiWorkerMirroredStrategy(base):
        def reduce(self, reduce_op, value, axis):
            if isinstance(value, (tuple, list, dict)):
                return tf.nest.map_structure(lambda v: self.reduce(reduce_op, v, axis), value)
            if axis is not None and self.experimental_local_results(value)[0].shape.rank == 0:
                axis = None
            return base.reduce(self, reduce_op, value, axis)

    return KerasMultiWorkerMirroredStrategy()


def is_chief(strategy) -> bool:
    """True for the process that writes the run: every single-machine strategy, and in a cluster the ``chief``
    task or, where there is none, worker 0."""
    resolver = getattr(strategy, "cluster_resolver", None)
    kind = getattr(resolver, "task_type", None)
    if not kind:
        return True
    if kind == "chief":
        return True
    return kind == "worker" and int(resolver.task_id) == 0 and "chief" not in resolver.cluster_spec().as_dict()


def worker_run_dir(run: Path, strategy) -> Path:
    """``run`` for the chief; for any other worker a temporary copy of it (removed at exit), so that resuming
    reads the same history and checkpoint while nothing is written into ``run`` itself."""
    if is_chief(strategy):
        return run
    tmp = Path(tempfile.mkdtemp(prefix="fer-train-worker-"))
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)
    if run.is_dir():
        shutil.copytree(run, tmp, dirs_exist_ok=True)
    return tmp


def shard_by_data(ds):
    """Shard an in-memory tf.data pipeline by element across workers (there are no files to shard by)."""
    import tensorflow as tf

    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(options)


def weights_digest(model) -> str:
    """SHA-256 of a model's weights in order (every worker of a synchronous run must end with the same one)."""
    import hashlib

    import numpy as np

    h = hashlib.sha256()
    for w in model.get_weights():
        h.update(np.ascontiguousarray(w).tobytes())
    return h.hexdigest()


def synchronize_batch_norm(model) -> int:
    """Make every BatchNormalization layer of ``model`` use the global batch's statistics (all-reduced across
    replicas). Without it each worker updates the moving mean and variance from its own shard, and the workers
    end with different normalisation weights. Returns the number of layers changed."""
    import keras

    from fer_train.models import all_layers

    changed = 0
    for layer in all_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization) and not layer.synchronized:
            layer.synchronized = True
            changed += 1
    return changed
