"""scripts/check_wheels.py: the engine pins resolve to wheels (one Python and platform here; the
script checks the full matrix), and a pin without a wheel is named with its platform. The
resolving tests need the package index and skip when it cannot be reached."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "check_wheels.py"


def _module():
    spec = importlib.util.spec_from_file_location("check_wheels", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["check_wheels"] = module  # its dataclass looks itself up there
    spec.loader.exec_module(module)
    return module


def _run(*args: str) -> subprocess.CompletedProcess:
    cw = _module()
    if cw.find_uv() is None:
        pytest.skip("uv is not installed (requirements-dev.txt)")
    try:
        proc = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=240)
    except subprocess.TimeoutExpired:
        pytest.skip("the package index did not answer within 240 s")
    if proc.returncode == 3:
        pytest.skip("the package index cannot be reached: " + proc.stderr.strip()[-200:])
    return proc


def test_culprits_and_table_name_package_and_platform():
    cw = _module()
    uv_mac = ("Because torch==2.13.0 has no wheels with a matching platform tag (e.g., `macosx_13_0_arm64`) and you "
              "require torch==2.13.0, we can conclude that your requirements are unsatisfiable.")  # fmt: skip
    assert cw.culprits(uv_mac) == ("torch",)
    uv_np = ("Because numpy==1.26.4 has no usable wheels and opencv-python-headless==4.11.0.86 depends on "
             "numpy==1.26.4, we can conclude ... hint: Wheels are required for `numpy` because building from source")  # fmt: skip
    assert cw.culprits(uv_np) == ("numpy",)
    assert cw.culprits("Because all versions of pycolmap have no wheels with a matching Python ABI tag") == ("pycolmap",)
    cells = [cw.Cell("3.11", "linux", True, ("a", "b")), cw.Cell("3.13", "macos", False, ("numpy",), "x")]
    lines = cw.table(cells).splitlines()
    assert lines[0].split("  ")[0].strip() == "package" and "py3.13 macOS arm64" in lines[0]
    assert lines[2].split()[:3] == ["resolved", "packages", "2"]
    assert lines[3].split() == ["numpy", "ok", "NO", "WHEEL"]
    assert cw.main(["--numpy", "3.12=2"]) == 2


def test_engine_pins_resolve_to_wheels_for_python_313_linux():
    proc = _run("--python", "3.13", "--platform", "linux")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip().endswith("1/1 resolved")
    row = next(ln for ln in proc.stdout.splitlines() if ln.startswith("resolved packages"))
    assert int(row.split()[-1]) > 40  # torch, the CUDA wheels, scipy, ... all as wheels


def test_a_pin_without_a_wheel_fails_naming_package_and_platform():
    """The issue's failure: numpy 1.26.4 has no wheel for Python 3.13."""
    proc = _run("--python", "3.13", "--platform", "windows", "--numpy", "3.13=1.26.4")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "check_wheels: no wheel: numpy for Python 3.13 on Windows x86_64" in proc.stderr
    assert any(ln.split()[:3] == ["numpy", "NO", "WHEEL"] for ln in proc.stdout.splitlines())
    assert proc.stdout.strip().endswith("0/1 resolved")
