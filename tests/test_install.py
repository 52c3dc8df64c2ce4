"""`make install` variants, read from `make -n` (nothing is installed), the pinned variant files,
the device check and the wheelhouse helpers."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO

REQUIREMENTS = REPO / "requirements"


def _make(venv: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAKE")}
    result = subprocess.run(["make", "--no-print-directory", "-n", f"VENV={venv}", *args], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=60)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def _stamp(venv: Path, variant: str) -> None:
    """An install of ``variant`` newer than every requirements file."""
    venv.mkdir(parents=True, exist_ok=True)
    (venv / ".installed").write_text(f"{variant}\n")
    future = time.time() + 3600
    os.utime(venv / ".installed", (future, future))


def _installs(output: str) -> list[str]:
    return [line for line in output.splitlines() if "pip install" in line and "-r requirements/lock.txt" in line]


@pytest.mark.parametrize(("args", "variant", "backend"), [
    ((), "cpu", "cpu"), (("CUDA=12",), "cuda12", "gpu"), (("CUDA=13",), "cuda13", "gpu"), (("TPU=1",), "tpu", "tpu")])
def test_a_fresh_install_installs_the_variant_asked_for(tmp_path, args, variant, backend):
    output = _make(tmp_path / "venv", "install", *args).stdout
    [install] = _installs(output)
    others = {"cuda12", "cuda13", "tpu"} - {variant}
    if variant != "cpu":
        assert f"-r requirements/{variant}.txt" in install
    assert not any(f"requirements/{other}.txt" in install for other in others)
    assert f"echo {variant} > {tmp_path / 'venv' / '.installed'}" in output
    assert f"lra.accelerator --expect {backend}" in output  # then shows the devices, fails without the accelerator


def test_install_cuda_reinstalls_over_another_variant_even_when_up_to_date(tmp_path):
    venv = tmp_path / "venv"
    _stamp(venv, "cpu")
    output = _make(venv, "install", "CUDA=12").stdout
    assert _installs(output) and "-r requirements/cuda12.txt" in _installs(output)[0]
    assert "pip uninstall" in output and "jax-cuda13-plugin" in output  # the previous variant's plugins go first
    _stamp(venv, "cuda12")
    output = _make(venv, "install", "CUDA=12").stdout
    assert not _installs(output)  # already that variant and up to date: only the device check runs
    assert "lra.accelerator --expect gpu" in output
    output = _make(venv, "install").stdout  # plain `make install` is the CPU variant
    assert _installs(output) and "requirements/cuda12.txt" not in _installs(output)[0]
    assert f"echo cpu > {venv / '.installed'}" in output


def test_other_targets_keep_the_installed_variant_and_skip_the_device_check(tmp_path):
    venv = tmp_path / "venv"
    _stamp(venv, "cuda13")
    output = _make(venv, "sweep", "ATTENTION=softmax", "PRESET=smoke").stdout
    assert not _installs(output) and "lra.accelerator" not in output and "lra.train --multirun" in output
    _stamp(venv, "")  # a stamp from before variants were recorded: a CPU install
    assert not _installs(_make(venv, "sweep", "ATTENTION=softmax").stdout)


def test_stale_pins_reinstall_the_same_variant(tmp_path):
    venv = tmp_path / "venv"
    _stamp(venv, "tpu")
    os.utime(venv / ".installed", (0, 0))  # older than the requirements files
    [install] = _installs(_make(venv, "install", "TPU=1").stdout)
    assert "-r requirements/tpu.txt" in install


def test_wheelhouse_installs_use_only_the_folder(tmp_path):
    output = _make(tmp_path / "venv", "install", "CUDA=13", f"WHEELHOUSE={tmp_path / 'wheels'}").stdout
    for line in [*_installs(output), next(line for line in output.splitlines() if "--no-deps -e ." in line)]:
        assert f"--no-index --find-links {tmp_path / 'wheels'}" in line
    output = _make(tmp_path / "venv", "wheelhouse", "CUDA=13", f"WHEELHOUSE={tmp_path / 'wheels'}").stdout
    assert "scripts/wheelhouse.py" in output and "-r requirements/cuda13.txt" in output
    output = _make(tmp_path / "venv", "wheelhouse", "TPU=1", "WHEEL_PYTHON=3.12",
                   "WHEEL_PLATFORM=manylinux_2_28_x86_64").stdout
    flat = " ".join(output.replace("\\\n", " ").split())
    assert "--python-version 3.12 --platform manylinux_2_28_x86_64" in flat and "-r requirements/tpu.txt" in flat


@pytest.mark.parametrize("args", [("CUDA=11",), ("CUDA=12", "TPU=1")])
def test_unknown_variants_are_refused(tmp_path, args):
    result = _make(tmp_path / "venv", "install", *args, check=False)
    assert result.returncode != 0 and ("CUDA=11: use CUDA=12 or CUDA=13" in result.stderr or "not both" in result.stderr)


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            match = re.fullmatch(r"([A-Za-z0-9_.-]+)==(\S+)", line)
            assert match, f"{path.name}: {line!r} is not an exact pin"
            pins[match.group(1).lower().replace("_", "-")] = match.group(2)
    return pins


def test_variant_requirements_are_pinned_to_the_locked_jax():
    jax = _pins(REQUIREMENTS / "lock.txt")["jax"]
    for cuda in ("12", "13"):
        pins = _pins(REQUIREMENTS / f"cuda{cuda}.txt")
        assert pins[f"jax-cuda{cuda}-plugin"] == pins[f"jax-cuda{cuda}-pjrt"] == jax
        assert not any(name.endswith(f"-cu{'13' if cuda == '12' else '12'}") for name in pins)
    assert "libtpu" in _pins(REQUIREMENTS / "tpu.txt")
    locked = _pins(REQUIREMENTS / "lock.txt")
    for variant in ("cuda12", "cuda13", "tpu"):  # installed together with the lock: no second pin of one package
        assert not set(_pins(REQUIREMENTS / f"{variant}.txt")) & set(locked), variant


def test_the_device_check_names_what_is_missing():
    from lra.accelerator import check

    assert "backend cpu" in check("cpu")
    with pytest.raises(RuntimeError, match="(?s)does not see a GPU.*backend cpu.*nvidia-smi"):
        check("gpu")
    result = subprocess.run([sys.executable, "-m", "lra.accelerator", "--expect", "tpu"], cwd=REPO,
                            capture_output=True, text=True, timeout=60, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert result.returncode == 1 and "does not see a TPU" in result.stderr


def test_wheelhouse_reads_pins_and_target_tags(tmp_path):
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import wheelhouse
    finally:
        sys.path.remove(str(REPO / "scripts"))
    (tmp_path / "r.txt").write_text("# comment\njax==0.10.2  # pinned\n\nflax==0.12.8\n")
    assert wheelhouse.requirements([tmp_path / "r.txt"]) == ["jax==0.10.2", "flax==0.12.8"]
    (tmp_path / "bad.txt").write_text("--index-url https://example.org\n")
    with pytest.raises(SystemExit, match="bad.txt"):
        wheelhouse.requirements([tmp_path / "bad.txt"])
    assert wheelhouse.build_requirements() == ["setuptools>=61"]
    args = wheelhouse.platform_args("3.12", "manylinux_2_28_x86_64")
    platforms = [args[i + 1] for i, a in enumerate(args) if a == "--platform"]
    assert platforms[0] == "manylinux_2_28_x86_64" and "manylinux2014_x86_64" in platforms and "any" in platforms
    assert "manylinux_2_31_x86_64" not in platforms  # never newer than the target's glibc
