"""Type stubs of the pybind11 module unetseg._C (csrc/python/module.cpp): the C++ Runner and its
option classes. The labelling ops are torch.ops.unetseg.* (typed wrappers in unetseg.ops)."""

import torch

__version__: str
MIN_RESCALE: float  # runner.h: factors (canonical / image diameter) stay within [MIN_RESCALE, MAX_RESCALE]
MAX_RESCALE: float
DIAMETER_TOLERANCE: float  # an estimate within this factor of the scale in use is taken as it is

def min_area_at(canonical_min_area: int, factor: float) -> int:
    """min_area (pixels at the model's canonical diameter) on the grid of an image resized by
    `factor` to that diameter: min_area / factor², rounded."""

def signal_channel(image: torch.Tensor) -> int | None:
    """The channel that holds all of a colour image that is one gray image in colour (a DAPI image
    saved as blue RGB), or None (runner.h)."""

def cpu_simd() -> str:
    """The CPU kernels' vector instruction set: "avx512" where the CPU has AVX-512F, "avx2" where it
    has AVX2, else "generic"."""

def set_cpu_simd(name: str) -> None:
    """Makes the CPU kernels use "generic", "avx2" or "avx512" (refused where the CPU lacks it); every
    choice gives the same labels (tests and benchmarks compare them)."""

class Normalisation:
    low: list[float]
    high: list[float]
    def __init__(self, low: list[float], high: list[float]) -> None: ...

class SegmentOptions:
    threshold: float | None
    min_area: int | None
    connectivity: int
    labelling: str
    boundary_threshold: float | None
    tile_size: int | None
    halo: int | None
    normalisation: Normalisation | None
    context_top: int
    context_bottom: int
    context_left: int
    context_right: int
    tta: bool
    diameter: float | None
    channel: int | None
    def __init__(self) -> None: ...

class ResolvedOptions:
    @property
    def threshold(self) -> float: ...
    @property
    def boundary_threshold(self) -> float: ...
    @property
    def min_area(self) -> int: ...
    @property
    def labelling(self) -> str: ...

class ModelInfo:
    @property
    def format_version(self) -> int: ...
    @property
    def architecture(self) -> str: ...
    @property
    def in_channels(self) -> int: ...
    @property
    def out_channels(self) -> int: ...
    @property
    def outputs(self) -> list[str]: ...
    @property
    def size_multiple(self) -> int: ...
    @property
    def threshold(self) -> float: ...
    @property
    def labelling(self) -> str: ...
    @property
    def boundary_threshold(self) -> float: ...
    @property
    def min_area(self) -> int: ...
    @property
    def halo(self) -> int: ...
    @property
    def diameter(self) -> float: ...
    @property
    def json(self) -> str: ...

class Runner:
    def __init__(self, model: str, device: str = "auto", precision: str = "auto", batch_size: int = 8) -> None: ...
    @property
    def info(self) -> ModelInfo: ...
    @property
    def device(self) -> str: ...
    @property
    def batch_size(self) -> int: ...
    @property
    def precision(self) -> str: ...
    @property
    def fused(self) -> bool: ...
    def resolve(self, options: SegmentOptions) -> ResolvedOptions: ...
    def normalisation(self, image: torch.Tensor, channel: int | None = None) -> Normalisation: ...
    def segment(
        self, images: list[torch.Tensor], options: SegmentOptions
    ) -> list[tuple[torch.Tensor, int, torch.Tensor, float]]: ...
    def predict(self, images: list[torch.Tensor], options: SegmentOptions) -> list[torch.Tensor]: ...
