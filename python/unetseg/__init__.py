"""unetseg: cell-nuclei segmentation with U-Nets.

Train in Python, export to TorchScript, and run in a libtorch runner whose last step is a fused
threshold + connected-components kernel (``torch.ops.unetseg.*``, wrapped by :mod:`unetseg.ops`).
"""

import torch  # noqa: F401  (loads libtorch before the extension that links it)

from . import (
    _C,  # noqa: F401  (registers torch.ops.unetseg.*)
    ops,
)
from .ops import label, label_stats, seeded_label, seeded_label_stats
from .segment import ObjectTable, Runner, Segmentation, segment_batch
from .slide import open_slide, segment_slide

__version__: str = _C.__version__

# torch's large CPU tensors as cached mappings in transparent huge pages (csrc/include/unetseg/runner.h:
# the network's forward runs 1.25-1.5x faster, large images take half the memory);
# UNETSEG_HUGE_PAGES=0 in the environment turns it off
_C.use_huge_pages()

cmake_prefix_path: str = str(__import__("pathlib").Path(__file__).parent / "share" / "cmake")
"""For C++ hosts: ``-DCMAKE_PREFIX_PATH`` that lets ``find_package(unetseg)`` find this install."""

__all__ = [
    "ObjectTable",
    "Runner",
    "Segmentation",
    "__version__",
    "cmake_prefix_path",
    "label",
    "label_stats",
    "ops",
    "seeded_label",
    "seeded_label_stats",
    "segment_batch",
    "open_slide",
    "segment_slide",
]
