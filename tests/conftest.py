import functools
import os

import pytest
import torch
from hypothesis import HealthCheck, settings

# The `threads` fixture sets the thread count for every generated input on purpose.
_shared = dict(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
settings.register_profile("ci", max_examples=400, **_shared)
settings.register_profile("dev", max_examples=40, **_shared)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


SIMD_LEVELS = ["generic", "avx2", "avx512"]  # narrowest first


@functools.cache
def available_cpu_simd() -> tuple[str, ...]:
    """The vector instruction sets the CPU kernels can use here, narrowest first (the CPU does not
    change: probed once)."""
    from unetseg import _C

    before, found = _C.cpu_simd(), []
    for name in SIMD_LEVELS:
        try:
            _C.set_cpu_simd(name)
            found.append(name)
        except RuntimeError:
            break
    _C.set_cpu_simd(before)
    return tuple(found)


@pytest.fixture(params=[(1, "generic"), (3, "avx2"), (7, "avx512")], ids=lambda p: f"threads{p[0]}-{p[1]}")
def threads(request):
    """Runs a test on 1, 3 and 7 threads (odd strip splits, many seams), each on another of the
    kernels' vector paths (generic, AVX2, AVX-512; the widest the CPU has where it lacks one), so
    every path meets every generated input."""
    from unetseg import _C

    count, simd = request.param
    available = available_cpu_simd()
    before = torch.get_num_threads(), _C.cpu_simd()
    torch.set_num_threads(count)
    _C.set_cpu_simd(simd if simd in available else available[-1])
    yield count
    torch.set_num_threads(before[0])
    _C.set_cpu_simd(before[1])


def make_checkpoint(architecture="unet", in_channels=1, out_channels=1, seed=0, **options) -> dict:
    """A training checkpoint (the format unetseg.train writes) of a freshly initialised model; BN
    statistics are randomised so that folding them into the convolutions is exercised."""
    from unetseg.checkpoint import CHECKPOINT_FORMAT
    from unetseg.data import Normalisation
    from unetseg.models import build_model

    if architecture == "unet":
        options = {"base_width": 4, "depth": 2, "batch_norm": True, **options}
    options = {"in_channels": in_channels, "out_channels": out_channels, **options}
    torch.manual_seed(seed)
    model = build_model(architecture, **options)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    return {
        "format": CHECKPOINT_FORMAT,
        "model": {"architecture": architecture, "options": options},
        "in_channels": in_channels,
        "out_channels": out_channels,
        "output_meaning": ["nucleus", "nucleus boundary"][:out_channels],
        "threshold": 0.5,
        "normalisation": Normalisation().to_dict(),
        "split": {"train": ["a"], "val": ["b"], "seed": 0},
        "training_data": "/data/synthetic",
        "state_dict": model.state_dict(),
        "epoch": 1,
        "validation": {"dsb_score": 0.5},
    }


@pytest.fixture(scope="session")
def npz(tmp_path_factory):
    """A labelled .npz dataset of 12 synthetic 48x48 images of two kinds, "a" and "b"."""
    import numpy as np

    from unetseg.data import synthetic_nuclei

    path = tmp_path_factory.mktemp("data") / "synthetic.npz"
    samples = [synthetic_nuclei((48, 48), seed=i, radius=(3, 6)) for i in range(12)]
    np.savez_compressed(
        path,
        images=np.stack([s.image for s in samples]),
        masks=np.stack([s.labels for s in samples]),
        kinds=np.array(["a", "b"] * 6),
    )
    return path


@pytest.fixture(scope="session")
def model_file(tmp_path_factory):
    """Exports a small 1-channel U-Net; returns (path, checkpoint)."""
    from unetseg.export import export

    ckpt = make_checkpoint()
    path = tmp_path_factory.mktemp("models") / "unet1.pt"
    export(ckpt, path)
    return path, ckpt


@pytest.fixture(scope="session")
def rgb_model(tmp_path_factory):
    """Exports a small RGB nucleus + boundary U-Net; returns (path, checkpoint)."""
    from unetseg.export import export

    ckpt = make_checkpoint(in_channels=3, out_channels=2, seed=1)
    path = tmp_path_factory.mktemp("models") / "unet3.pt"
    export(ckpt, path)
    return path, ckpt


@pytest.fixture(scope="session")
def runner(rgb_model):
    """A float32 CPU runner of `rgb_model` (comparable with the eager model), batches of 3 (so some
    calls split into several batches)."""
    import unetseg

    return unetseg.Runner(rgb_model[0], device="cpu", batch_size=3, precision="float32")
