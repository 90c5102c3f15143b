"""scripts/gpu-check on a machine without a usable GPU: it says what is missing, exits with
status 2, and installs nothing (it looks for the GPU before it creates its venv). On a machine
with a GPU these tests skip: the script's GPU path is what it runs there."""
import ctypes
import glob
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gpu-check"


def _gpu_here():
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    return bool(glob.glob("/dev/nvidia[0-9]*"))


pytestmark = pytest.mark.skipif(_gpu_here(), reason="a GPU is usable here: scripts/gpu-check checks it for real")


def run_gpu_check(tmp_path, path=None, library_path=None):
    env = dict(os.environ, PATH=path or os.environ["PATH"])
    env.pop("LD_LIBRARY_PATH", None)
    if library_path:
        env["LD_LIBRARY_PATH"] = str(library_path)
    venv = tmp_path / "venv"
    result = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path / "out"), "--venv", str(venv)],
                            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    return result, venv


def test_without_driver_it_exits_2_naming_what_is_missing_and_installs_nothing(tmp_path):
    bare_path = tmp_path / "bin"
    bare_path.mkdir()   # no nvidia-smi on this PATH
    path = f"{bare_path}:/usr/bin:/bin"
    result, venv = run_gpu_check(tmp_path, path=path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "no usable NVIDIA GPU here, so nothing was installed or run" in result.stdout
    assert "NO  driver library libcuda.so.1: cannot be loaded" in result.stdout
    if shutil.which("nvidia-smi", path=path) is None:
        assert "nvidia-smi: not on the PATH" in result.stdout
    assert not venv.exists()
    assert "no usable NVIDIA GPU" in (tmp_path / "out" / "gpu-check.log").read_text()


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc to build a stand-in driver library")
def test_a_driver_without_a_device_is_reported_with_cuinits_error(tmp_path):
    """nvidia-smi and a libcuda.so.1 that load are not enough: cuInit decides (here it answers
    CUDA_ERROR_NO_DEVICE, as a driver without a GPU does)."""
    tools = tmp_path / "bin"
    tools.mkdir()
    smi = tools / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'Stand-in GPU, 580.00, 1024 MiB, 9.0'\n")
    smi.chmod(0o755)
    driver = tmp_path / "driver"
    driver.mkdir()
    (driver / "cuda.c").write_text("int cuInit(unsigned flags) { return 100; }\n"
                                   "int cuDeviceGetCount(int *count) { *count = 0; return 100; }\n")
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(driver / "libcuda.so.1"), str(driver / "cuda.c")], check=True)

    result, venv = run_gpu_check(tmp_path, path=f"{tools}:{os.environ['PATH']}", library_path=driver)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "nvidia-smi: Stand-in GPU, 580.00, 1024 MiB, 9.0" in result.stdout
    assert "yes driver library libcuda.so.1: loads" in result.stdout
    assert "NO  cuInit and a device: failed with CUresult 100 (CUDA_ERROR_NO_DEVICE)" in result.stdout
    assert not venv.exists()
