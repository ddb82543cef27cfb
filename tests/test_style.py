"""The code's lint and format (ruff, configured in pyproject.toml), checked on every test run."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUFF = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")


@pytest.mark.skipif(RUFF is None, reason="ruff is not installed (pip install '.[test]' installs it)")
@pytest.mark.parametrize("command", [["check"], ["format", "--check"]], ids=["lint", "format"])
def test_ruff(command):
    result = subprocess.run([RUFF, *command, "."], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, (
        f"ruff {' '.join(command)} found problems (fix: ruff {command[0]} .):\n"
        + (result.stdout + result.stderr)[-4000:]
    )


def test_the_type_stubs_name_every_binding():
    """unetseg/_C.pyi declares every class, method and property the pybind11 module has."""
    import ast

    from unetseg import _C

    stubs = ast.parse((ROOT / "python" / "unetseg" / "_C.pyi").read_text())
    declared = {
        node.name: {
            n.name if hasattr(n, "name") else n.target.id
            for n in node.body
            if isinstance(n, (ast.FunctionDef, ast.AnnAssign))
        }
        for node in stubs.body
        if isinstance(node, ast.ClassDef)
    }
    for name in ("Runner", "SegmentOptions", "ModelInfo", "ResolvedOptions", "Normalisation"):
        bound = {m for m in dir(getattr(_C, name)) if not m.startswith("_")}
        assert bound <= declared[name], (name, sorted(bound - declared[name]))
    assert (ROOT / "python" / "unetseg" / "py.typed").exists()


def test_inference_never_imports_training():
    code = "import sys, unetseg; unetseg.segment_batch; print('unetseg.train' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
