import os

import pytest
import torch
from hypothesis import HealthCheck, settings

# The `threads` fixture sets the thread count for every generated input on purpose.
_shared = dict(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
settings.register_profile("ci", max_examples=400, **_shared)
settings.register_profile("dev", max_examples=40, **_shared)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(params=[1, 7], ids=lambda n: f"threads{n}")
def threads(request):
    """Runs a test single-threaded and with 7 threads (odd strip splits, many seams)."""
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)
