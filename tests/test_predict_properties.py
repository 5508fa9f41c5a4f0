"""Property-based test of ``Predictor.predict``: any array (shape, dtype, range, NaN, inf) gives finite
probabilities or a typed error, never a crash and never a NaN. No TensorFlow."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as npst

from fer_runtime.errors import FerError

DTYPES = st.one_of(npst.boolean_dtypes(), npst.integer_dtypes(), npst.unsigned_integer_dtypes(),
                   npst.floating_dtypes(), npst.complex_number_dtypes(), st.just(np.dtype(object)))
SHAPES = npst.array_shapes(min_dims=0, max_dims=5, min_side=0, max_side=10)
FAST = settings(max_examples=150, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


IMAGE_DTYPES = st.sampled_from([np.uint8, np.uint16, np.int16, np.int32, np.float16, np.float32, np.float64, np.bool_])
IMAGE_SHAPES = st.one_of(
    st.tuples(st.integers(1, 60), st.integers(1, 60)),                                        # HxW
    st.tuples(st.integers(1, 60), st.integers(1, 60), st.sampled_from([1, 3, 4])),            # HxWxC
    st.tuples(st.integers(0, 3), st.integers(1, 30), st.integers(1, 30)),                     # NxHxW
    st.tuples(st.integers(0, 3), st.integers(1, 30), st.integers(1, 30), st.sampled_from([1, 3, 4])))  # NxHxWxC


def _any_array(dtype: np.dtype) -> st.SearchStrategy[np.ndarray]:
    if dtype == np.dtype(object):
        return SHAPES.map(lambda s: np.full(s, None, dtype=object))
    return npst.arrays(dtype, SHAPES)  # floats include NaN, +-inf, subnormals and huge values by default


def _image_like(dtype: type) -> st.SearchStrategy[np.ndarray]:
    """Arrays shaped like images or batches; values over the dtype's whole range (NaN and inf for floats)."""
    elements = st.integers(0, 255) if np.issubdtype(dtype, np.signedinteger) else None
    return npst.arrays(dtype, IMAGE_SHAPES, elements=elements)


def _poisoned() -> st.SearchStrategy[np.ndarray]:
    """A float image with NaN, +inf or -inf at one or more places (the rest finite)."""
    def poke(args: tuple) -> np.ndarray:
        image, value, places = args
        image = image.copy()
        if image.size:
            image.flat[[i % image.size for i in places]] = value
        return image
    finite = st.sampled_from([np.float16, np.float32, np.float64]).flatmap(
        lambda dt: npst.arrays(dt, IMAGE_SHAPES, elements=st.floats(0, 1, width=np.dtype(dt).itemsize * 8)))
    return st.tuples(finite, st.sampled_from([np.nan, np.inf, -np.inf]),
                     st.lists(st.integers(0, 10**6), min_size=1, max_size=5)).map(poke)


def _arrays() -> st.SearchStrategy[np.ndarray]:
    """Any dtype and small shape, image-shaped arrays of the dtypes images come in (so both the predictions and
    the errors are exercised), and float images with NaN or inf in them."""
    return st.one_of(DTYPES.flatmap(_any_array), IMAGE_DTYPES.flatmap(_image_like), _poisoned())


def _nonfinite(images) -> bool:
    arrays = images if isinstance(images, list) else [images]
    return any(np.issubdtype(a.dtype, np.inexact) and a.size > 0 and not np.isfinite(a).all() for a in arrays)


def _check(predictor, images) -> None:
    if _nonfinite(images):  # NaN or inf anywhere: never a (silently meaningless) prediction
        with pytest.raises(FerError):
            predictor.predict(images)
        return
    try:
        probs = predictor.predict(images)
    except FerError:
        return  # a typed error is an answer
    n = len(images) if isinstance(images, list) else None
    assert isinstance(probs, np.ndarray) and probs.dtype == np.float32
    assert probs.ndim == 2 and probs.shape[1] == len(predictor.labels)
    if n is not None:
        assert probs.shape[0] == n
    assert np.isfinite(probs).all(), "NaN or inf in the output"
    assert ((probs >= 0) & (probs <= 1)).all()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-4)


@FAST
@given(image=_arrays())
def test_predict_any_array(predictor, image: np.ndarray) -> None:
    _check(predictor, image)


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(images=st.lists(_arrays(), min_size=0, max_size=4))
def test_predict_any_list_of_arrays(predictor, images: list[np.ndarray]) -> None:
    _check(predictor, images)


def _finite_image(dtype: type) -> st.SearchStrategy[np.ndarray]:
    """A valid image or batch (HxW, HxWxC or NxHxWxC; no size 0 but N) with finite values in the dtype's range."""
    shapes = st.one_of(
        st.tuples(st.integers(1, 60), st.integers(1, 60)),
        st.tuples(st.integers(1, 60), st.integers(1, 60), st.sampled_from([1, 3, 4])),
        st.tuples(st.integers(0, 3), st.integers(1, 30), st.integers(1, 30), st.sampled_from([1, 3, 4])))
    if np.issubdtype(dtype, np.floating):
        elements = st.floats(allow_nan=False, allow_infinity=False, width=np.dtype(dtype).itemsize * 8)
    else:
        elements = st.integers(0, 255) if np.issubdtype(dtype, np.signedinteger) else None
    return npst.arrays(dtype, shapes, elements=elements)


@FAST
@given(image=IMAGE_DTYPES.flatmap(_finite_image))
def test_predict_any_valid_image_gives_probabilities(predictor, image: np.ndarray) -> None:
    """Every dtype ``to_gray`` documents, at any size and any finite value, is predicted (never refused)."""
    probs = predictor.predict(image)
    assert probs.shape == (image.shape[0] if image.ndim == 4 else 1, len(predictor.labels))
    assert probs.dtype == np.float32 and np.isfinite(probs).all()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-4)


@pytest.mark.parametrize("bad", [np.full((48, 48), np.nan, np.float32), np.full((48, 48), np.inf),
                                 np.array([[np.nan, 1.0], [0.0, 0.5]]), np.full((4, 4, 3), -np.inf, np.float16)])
def test_nan_and_inf_images_are_a_typed_error(predictor, bad: np.ndarray) -> None:
    with pytest.raises(FerError, match="NaN or infinity"):
        predictor.predict(bad)
