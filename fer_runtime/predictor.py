"""The :class:`Predictor`: verified ONNX models in an onnxruntime session, images in, probabilities out."""
from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np

from fer_runtime import images as imgs
from fer_runtime import providers as prov
from fer_runtime.errors import (FerRuntimeError, MissingOutputError, ModelIntegrityError,
                                ModelNotFoundError, ProviderUnavailableError, first_line)
from fer_runtime.labels import IMAGE_SIZE
from fer_runtime.manifest import CLASS_INPUT, MEMBER_PROBS, PROBS, SALIENCY, Manifest, read_manifest
from fer_runtime.model_files import read_graph
from fer_runtime.numeric import normalise_saliency

MODEL_DIR_ENV = "FER_MODEL_DIR"

ClassSpec = int | str | Sequence[int | str] | np.ndarray | None


# models/ of a source checkout, next to this package's folder (setuptools maps it to fer_runtime.models)
CHECKOUT_MODEL_DIR = Path(__file__).resolve().parent.parent / "models"


def default_model_dir() -> Path:
    """The model directory used when none is given: ``$FER_MODEL_DIR`` if set, else the packaged models.

    Run from the root of a source checkout, its ``fer_runtime/`` folder shadows the installed package and
    ``fer_runtime.models`` (mapped in only at install time) is not importable: then the checkout's own
    ``models/`` folder is used.
    """
    env = os.environ.get(MODEL_DIR_ENV)
    if env:
        return Path(env)
    try:
        return Path(str(files("fer_runtime.models")))
    except ModuleNotFoundError:
        if CHECKOUT_MODEL_DIR.is_dir():
            return CHECKOUT_MODEL_DIR
        raise ModelNotFoundError(f"no packaged models: fer_runtime.models is not installed and {CHECKOUT_MODEL_DIR} "
                                 f"does not exist; pass model_dir or set {MODEL_DIR_ENV}") from None


class Predictor:
    """Facial-expression classifier over the shipped (or any exported) ONNX models.

    Args:
        model_dir: folder with ``manifest.json`` and the ONNX files; default :func:`default_model_dir`.
        model: manifest variant to use (e.g. ``"accurate"``); default the manifest's ``default_variant``.
        device: ``"auto"`` (CUDA if onnxruntime can really use it, else CPU), ``"cpu"`` or ``"cuda"``.
        providers: explicit onnxruntime providers (names or ``(name, options)``); overrides ``device``.
        batch_size: images per ``session.run`` call.
        threads: onnxruntime intra-op threads (default: onnxruntime's choice).

    Every model file's SHA-256 is checked against the manifest and the session is built from exactly
    the verified bytes. The saliency model is verified and loaded on first use (or :meth:`load_saliency`).
    One instance may be shared between threads.

    Raises:
        ModelNotFoundError, ModelIntegrityError, ProviderUnavailableError; :class:`InferenceError` from the
        inference methods when onnxruntime fails while running a model.
    """

    def __init__(self, model_dir: str | os.PathLike[str] | None = None, model: str | None = None,
                 device: str = "auto", providers: Sequence[prov.ProviderSpec] | None = None,
                 batch_size: int = 64, threads: int | None = None) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if threads is not None and threads < 0:
            raise ValueError(f"threads must be >= 0 (0 = onnxruntime default), got {threads}")
        self.model_dir = Path(model_dir) if model_dir is not None else default_model_dir()
        self.manifest: Manifest = read_manifest(self.model_dir)
        self.variant = model if model is not None else self.manifest.default_variant
        if self.variant not in self.manifest.variants:
            raise ModelNotFoundError(f"model {self.variant!r} is not in {self.model_dir / 'manifest.json'} "
                                     f"(variants: {', '.join(sorted(self.manifest.variants))})")
        self.batch_size = int(batch_size)
        self.threads = threads
        self.device = device
        self._requested = prov.requested_providers(device, providers)
        self._cuda_optional = providers is None and device == "auto"
        self._input_name = self.manifest.input.name
        self._weights: dict[str, bytes] = {}  # weights files read (and verified) once for both graphs

        spec = self.manifest.variants[self.variant]
        self._forward_file = spec.forward
        self._forward = self._session(spec.forward, inputs=[self._input_name], outputs=[PROBS])
        self._saliency_file = spec.saliency
        self._saliency_sess: Any = None
        self._saliency_lock = threading.Lock()

    # -- public properties ------------------------------------------------------------------------
    @property
    def labels(self) -> list[str]:
        """Class names in output-column order."""
        return list(self.manifest.labels)

    @property
    def providers(self) -> list[str]:
        """The execution providers the forward session actually uses (e.g. ``["CPUExecutionProvider"]``)."""
        return list(self._forward.get_providers())

    def __repr__(self) -> str:
        return (f"Predictor(model_dir={str(self.model_dir)!r}, model={self.variant!r}, "
                f"providers={self.providers}, batch_size={self.batch_size})")

    # -- inference --------------------------------------------------------------------------------
    def predict(self, images: Any) -> np.ndarray:
        """Class probabilities, float32 of shape (N, number of labels).

        ``images``: a list of faces of any size, channel count (gray, BGR, BGRA) and dtype (uint8, uint16,
        float in 0..1 or 0..255), or a numpy array (HxW or HxWxC = one face; NxHxW or NxHxWxC = a batch).
        A path (``str`` or ``os.PathLike``), or a list holding paths, is read with
        :func:`fer_runtime.images.read_image` (the whole image is the face; use :func:`fer_runtime.analyze` to
        find the faces in a photo first). Each face is converted to gray, resized to 48x48 (INTER_AREA when
        shrinking) as float32 0..255.
        """
        return self._run_forward(self._prepare_any(images))

    def predict_members(self, images: Any) -> np.ndarray:
        """Per-member, per-view probabilities, float32 of shape (N, M members, V views, number of labels).

        The views are those of the TTA the model was exported with, in :mod:`fer_runtime.tta`'s order (1 for
        none, 2 for flip, 12 for crops; view 0 is the image itself). Each entry is
        ``softmax(member logits / temperature)``, so ``predict(images)`` equals the mean over axes 1 and 2.
        Images are accepted as in :meth:`predict`. Raises MissingOutputError for models exported before
        ``member_probs`` existed.
        """
        out = self._forward.get_outputs()
        spec = next((o for o in out if o.name == MEMBER_PROBS), None)
        if spec is None:
            raise MissingOutputError(f"{self.model_dir / self.manifest.variants[self.variant].forward}: the forward graph "
                                     f"has no '{MEMBER_PROBS}' output (outputs {[o.name for o in out]}); re-export it "
                                     "with a current fer-export")
        dims = [d if isinstance(d, int) else 1 for d in spec.shape[1:]]  # for an empty batch: from the graph
        return self._run_forward(self._prepare_any(images), MEMBER_PROBS, tuple(dims))

    def saliency(self, images: Any, classes: ClassSpec = None) -> np.ndarray | list[np.ndarray]:
        """Gradient saliency maps in [0, 1] at each input's own size.

        The map is |d score(class) / d pixel| of the 48x48 input, resized to the image's HxW and then divided
        by its maximum, so every map's maximum is exactly 1.0. A map with nothing to point at is all zeros: a
        blank image (all 48x48 input pixels equal) and a gradient that is the same everywhere
        (:func:`fer_runtime.numeric.normalise_saliency`). ``classes``: None (each image's predicted class), one
        class for all, or one per image (indices or label names). ``images`` are accepted as in :meth:`predict`.
        Returns an (N, H, W) float32 array if all images share a size, else a list of (H_i, W_i) arrays.
        """
        ims = imgs.as_image_list(images)
        x = self._prepare(ims)
        cls = (np.argmax(self._run_forward(x), axis=1).astype(np.int64) if classes is None
               else self._class_array(classes, len(ims)))
        sess = self.load_saliency()
        assert self._saliency_file is not None  # load_saliency() raised otherwise
        grads = [self._run(sess, self._saliency_file, SALIENCY,
                           {self._input_name: x[i:i + self.batch_size], CLASS_INPUT: cls[i:i + self.batch_size]})
                 for i in range(0, len(x), self.batch_size)]
        g = np.abs(np.concatenate(grads, axis=0).reshape(len(x), IMAGE_SIZE, IMAGE_SIZE).astype(np.float32)
                   if grads else np.zeros((0, IMAGE_SIZE, IMAGE_SIZE), np.float32))
        g[x.max(axis=(1, 2, 3)) == x.min(axis=(1, 2, 3))] = 0.0  # a blank image: a flat (zero) gradient
        # normalised after resizing (INTER_AREA/LINEAR of |grad| >= 0), so the maximum at the image's size is 1
        maps = [normalise_saliency(imgs.resize(m, im.shape[1], im.shape[0])[None])[0] for m, im in zip(g, ims)]
        if len({m.shape for m in maps}) <= 1:
            return np.stack(maps) if maps else np.zeros((0, IMAGE_SIZE, IMAGE_SIZE), np.float32)
        return maps

    def load_saliency(self) -> Any:
        """Verify and load the saliency model now (it is otherwise loaded on the first :meth:`saliency` call)."""
        if self._saliency_sess is None:
            with self._saliency_lock:
                if self._saliency_sess is None:
                    if self._saliency_file is None:
                        raise ModelNotFoundError(f"model {self.variant!r} has no saliency graph in the manifest")
                    self._saliency_sess = self._session(self._saliency_file, inputs=[self._input_name, CLASS_INPUT],
                                                        outputs=[SALIENCY])
        return self._saliency_sess

    # -- internals --------------------------------------------------------------------------------
    def _session(self, filename: str, inputs: list[str], outputs: list[str]) -> Any:
        """Verify ``filename`` (and its weights file) against the manifest; build an InferenceSession from those bytes."""
        ort = prov.onnxruntime()
        from onnxruntime.capi.onnxruntime_pybind11_state import EPFail

        graph = read_graph(self.model_dir, self.manifest, filename, self._weights)
        so = ort.SessionOptions()
        if self.threads:
            so.intra_op_num_threads = int(self.threads)
        try:
            sess = graph.session(self._requested, so)
        except EPFail as e:  # an execution provider failed to initialise
            if not (self._cuda_optional and prov.CUDA in prov.provider_names(self._requested)):
                raise ProviderUnavailableError(f"{self.model_dir / filename}: execution provider failed "
                                               f"({first_line(e)}); use device='cpu'") from None
            # device='auto' means CUDA if usable, else CPU: this and every later session of this Predictor use CPU
            self._requested = [prov.CPU]
            return self._session(filename, inputs, outputs)
        except prov.onnxruntime_errors() as e:
            raise ModelIntegrityError(f"{self.model_dir / filename}: onnxruntime cannot load it ({first_line(e)})",
                                      str(self.model_dir / filename)) from None
        prov.check_session_providers(self._requested, sess, cuda_optional=self._cuda_optional)
        have_in = {i.name for i in sess.get_inputs()}
        have_out = {o.name: o for o in sess.get_outputs()}
        missing = [n for n in inputs if n not in have_in] + [n for n in outputs if n not in have_out]
        if missing:
            raise ModelIntegrityError(f"{self.model_dir / filename}: graph lacks {', '.join(missing)} "
                                      f"(inputs {sorted(have_in)}, outputs {sorted(have_out)})", str(self.model_dir / filename))
        if PROBS in outputs:
            width = have_out[PROBS].shape[-1]
            if isinstance(width, int) and width != len(self.manifest.labels):
                raise ModelIntegrityError(f"{self.model_dir / filename}: 'probs' has {width} classes but the manifest "
                                          f"lists {len(self.manifest.labels)} labels", str(self.model_dir / filename))
        return sess

    def _prepare_any(self, images: Any) -> np.ndarray:
        """Like ``_prepare(as_image_list(images))``, vectorised for a uint8 batch of 48x48 gray crops."""
        if (isinstance(images, np.ndarray) and images.dtype == np.uint8 and images.ndim in (3, 4)
                and images.shape[1:3] == (IMAGE_SIZE, IMAGE_SIZE) and (images.ndim == 3 or images.shape[3] == 1)):
            return images.reshape(len(images), IMAGE_SIZE, IMAGE_SIZE, 1).astype(np.float32)
        return self._prepare(imgs.as_image_list(images))

    def _prepare(self, ims: list[np.ndarray]) -> np.ndarray:
        """Faces to the (N, 48, 48, 1) float32 model input."""
        out = np.empty((len(ims), IMAGE_SIZE, IMAGE_SIZE, 1), np.float32)
        for i, im in enumerate(ims):
            try:
                out[i, :, :, 0] = imgs.preprocess(im)
            except FerRuntimeError as e:
                raise type(e)(f"image {i}: {e}") from None
        return out

    def _run_forward(self, x: np.ndarray, output: str = PROBS, dims: tuple[int, ...] | None = None) -> np.ndarray:
        """One forward-graph ``output`` for ``x``, run ``batch_size`` rows at a time; ``dims`` is its per-row shape
        (default: one value per label), used only for an empty ``x``."""
        parts = [self._run(self._forward, self._forward_file, output, {self._input_name: x[i:i + self.batch_size]})
                 for i in range(0, len(x), self.batch_size)]
        if parts:
            return np.concatenate(parts).astype(np.float32, copy=False)
        return np.zeros((0, *(dims or (len(self.manifest.labels),))), np.float32)

    def _run(self, sess: Any, filename: str, output: str, feed: dict[str, np.ndarray]) -> np.ndarray:
        """``sess.run([output], feed)[0]``; an onnxruntime failure becomes :class:`InferenceError`."""
        return prov.run_session(sess, self.model_dir / filename, [output], feed)[0]

    def _class_array(self, classes: ClassSpec, n: int) -> np.ndarray:
        """Class indices (or label names), one for all or one per image, as an int64 array of length n."""
        lookup = {name.lower(): i for i, name in enumerate(self.manifest.labels)}

        def index(c: Any) -> int:
            if isinstance(c, str):
                if c.lower() not in lookup:
                    raise ValueError(f"unknown class {c!r}; expected one of {', '.join(self.manifest.labels)}")
                return lookup[c.lower()]
            i = int(c)
            if not 0 <= i < len(lookup):
                raise ValueError(f"class index {i} out of range 0..{len(lookup) - 1}")
            return i

        if isinstance(classes, (str, int, np.integer)):
            return np.full(n, index(classes), np.int64)
        arr = [index(c) for c in classes]
        if len(arr) != n:
            raise ValueError(f"got {len(arr)} classes for {n} images")
        return np.asarray(arr, np.int64)
