"""BioImage Model Zoo packages: valid for the spec's own validator, test tensors reproduced by the
package's weights and preprocessing, and runnable by unetseg."""

import io
import warnings
import zipfile

import numpy as np
import pytest
import torch

import unetseg
from unetseg.bioimageio import export_bioimageio
from unetseg.cli import main

spec = pytest.importorskip("bioimageio.spec", reason="the bioimageio extra is not installed")
yaml = pytest.importorskip("yaml")


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    path = tmp_path_factory.mktemp("zoo") / "model.zip"
    assert main(["export", "default", "--format", "bioimageio", "-o", str(path), "--maintainer", "unetseg"]) == 0
    return path


def problems(summary):
    return [(d.name, e.loc, e.msg) for d in summary.details for e in [*d.errors, *d.warnings]]


# bioimageio.spec leaves the package's zip open (its ResourceWarning is not ours)
@pytest.mark.filterwarnings("ignore::ResourceWarning", "ignore::pytest.PytestUnraisableExceptionWarning")
def test_the_spec_validator_passes_it_without_warnings(package, tmp_path):
    # With a maintainer the validator looks the GitHub user up online (not reachable here): its file
    # checks (hashes, tensors) run on a package without one, where that is the only warning.
    summary = spec.load_description(package, perform_io_checks=False).validation_summary
    assert summary.status == "valid-format" and not problems(summary), problems(summary)
    offline = export_bioimageio(unetseg.segment.default_model_path(), tmp_path / "plain.zip")
    summary = spec.load_description(offline, perform_io_checks=True).validation_summary
    assert summary.status == "valid-format", problems(summary)
    assert [loc for _, loc, _ in problems(summary)] == [()]  # "Missing `maintainers` ... `github_user`"


def test_test_tensors_are_the_weights_on_the_preprocessed_input(package):
    with zipfile.ZipFile(package) as archive:
        rdf = yaml.safe_load(archive.read("rdf.yaml"))
        raw = np.load(io.BytesIO(archive.read("test_input.npy")))
        expected = np.load(io.BytesIO(archive.read("test_output.npy")))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            network = torch.jit.load(io.BytesIO(archive.read(rdf["weights"]["torchscript"]["source"])))
    kwargs = rdf["inputs"][0]["preprocessing"][0]["kwargs"]  # scale_range, as the spec defines it
    low = np.percentile(raw, kwargs["min_percentile"], axis=(2, 3), keepdims=True)
    high = np.percentile(raw, kwargs["max_percentile"], axis=(2, 3), keepdims=True)
    x = (raw - low) / (high - low + kwargs["eps"])
    with torch.no_grad():
        got = torch.sigmoid(network(torch.from_numpy(x.astype(np.float32)))).numpy()
    assert rdf["outputs"][0]["postprocessing"] == [{"id": "sigmoid"}]
    np.testing.assert_allclose(got, expected, atol=1e-4)
    assert rdf["config"]["unetseg"]["labelling"] == "seeded"


def test_unetseg_runs_the_package_as_its_model_file(package, tmp_path):
    image = unetseg.data.synthetic_nuclei((80, 90), seed=3).image
    want = unetseg.segment_batch([image])[0]
    got = unetseg.segment_batch([image], package)[0]
    np.testing.assert_array_equal(got.labels, want.labels)
    with pytest.raises(ValueError, match="is not a bioimage.io package made by unetseg"):
        zipfile.ZipFile(tmp_path / "other.zip", "w").close()
        unetseg.Runner(tmp_path / "other.zip")
