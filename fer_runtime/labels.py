"""The FER2013 class list, defined once for every part of the project."""

LABELS: tuple[str, ...] = ("Angry", "Disgust", "Fear", "Happy", "Sad", "Surprise", "Neutral")
NUM_CLASSES: int = len(LABELS)
IMAGE_SIZE: int = 48


def label_index(name: str) -> int:
    """Map a class name (any case) or its digit ("0".."6") to its index; raise KeyError if unknown."""
    s = name.strip()
    if s.isascii() and s.isdigit() and int(s) < NUM_CLASSES:  # "²".isdigit() is True, int("²") fails
        return int(s)
    lowered = {n.lower(): i for i, n in enumerate(LABELS)}
    if s.lower() in lowered:
        return lowered[s.lower()]
    raise KeyError(f"unknown label {name!r}; expected one of {', '.join(LABELS)} or 0..{NUM_CLASSES - 1}")
