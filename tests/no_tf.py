"""Code for a subprocess that must run with TensorFlow (and the training stack) impossible to import."""
from __future__ import annotations

BLOCKED = ("tensorflow", "keras", "tf2onnx", "tf_keras")


def block_imports(extra: str = "") -> str:
    """Python source that makes importing the training stack fail; ``extra`` is more ``find_spec`` body."""
    return f"""
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {BLOCKED!r}:
            raise ImportError('blocked in this test: ' + name)
{extra}
sys.meta_path.insert(0, Block())
"""


BLOCK_TF = block_imports()
