#!/usr/bin/env python3
"""Collect every wheel an install needs into one folder, for machines without network access.

    make wheelhouse CUDA=12 WHEELHOUSE=wheels            # on a machine with network
    make install CUDA=12 WHEELHOUSE=wheels               # on the machine without (same repository)

The folder gets the wheels of the pinned requirements files given with -r, plus the build backend
of ``pyproject.toml`` (the editable install of lra builds with it). Packages published only as
source archives (e.g. Hydra's ``antlr4-python3-runtime``) are built into wheels here.

By default the wheels are for this machine's Python and platform. ``--python-version`` and
``--platform`` collect for another one (e.g. a cluster node with Python 3.12): binary wheels are
then downloaded for that target, and a source-only package is accepted only when the wheel built
from it is pure Python (``py3-none-any``); anything else fails with the package's name.
Uses only the standard library and pip, so it runs before lra is installed.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# manylinux tags accepted for a --platform target (newest first); pip needs each spelled out.
MANYLINUX = ("2_39", "2_35", "2_34", "2_31", "2_28", "2_27", "2_17", "2014", "1")


def requirements(files: list[Path]) -> list[str]:
    """The ``name==version`` lines of pinned requirements files (comments and options dropped)."""
    lines = []
    for path in files:
        for line in path.read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            if line.startswith("-"):
                raise SystemExit(f"{path}: option line {line!r} is not supported in a pinned requirements file")
            lines.append(line)
    return lines


def build_requirements() -> list[str]:
    """The ``[build-system] requires`` of pyproject.toml."""
    text = (REPO / "pyproject.toml").read_text()
    block = re.search(r"\[build-system\][^\[]*?requires\s*=\s*\[(.*?)\]", text, re.S)
    return re.findall(r'"([^"]+)"', block.group(1)) if block else []


def pip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", *args, "--disable-pip-version-check", "--quiet"],
                          capture_output=True, text=True)


def platform_args(python_version: str | None, platform: str | None) -> list[str]:
    args = ["--only-binary=:all:", "--implementation", "cp"]
    if python_version:
        args += ["--python-version", python_version]
    if platform:
        match = re.fullmatch(r"manylinux_?(\d+_\d+|2014|1)_(\w+)", platform)
        tags = [platform] if not match else [
            f"manylinux_{tag}_{match.group(2)}" if "_" in tag else f"manylinux{tag}_{match.group(2)}"
            for tag in MANYLINUX[MANYLINUX.index(match.group(1)):]]
        for tag in (*tags, "any"):
            args += ["--platform", tag]
    return args


def collect_for_target(out: Path, needed: list[str], python_version: str | None, platform: str | None) -> None:
    target = platform_args(python_version, platform)
    done = pip("download", "--no-deps", "-d", str(out), *target, *needed)
    if done.returncode == 0:
        return
    # one by one: find the packages without a wheel for the target, and build those that are pure Python
    for requirement in needed:
        if pip("download", "--no-deps", "-d", str(out), *target, requirement).returncode == 0:
            continue
        with tempfile.TemporaryDirectory() as scratch:
            built = pip("wheel", "--no-deps", "-w", scratch, requirement)
            wheels = list(Path(scratch).glob("*.whl"))
            if built.returncode or not wheels:
                raise SystemExit(f"wheelhouse: cannot get {requirement} for the target:\n{built.stderr[-2000:]}")
            if not wheels[0].name.endswith("-none-any.whl"):
                raise SystemExit(f"wheelhouse: {requirement} has no wheel for the target and builds only for this "
                                 f"machine ({wheels[0].name}); make the wheelhouse on a machine like the target")
            wheels[0].replace(out / wheels[0].name)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="the folder to fill (created)")
    parser.add_argument("-r", dest="files", type=Path, action="append", required=True, help="pinned requirements file")
    parser.add_argument("--python-version", help="target Python, e.g. 3.12 (default: this one)")
    parser.add_argument("--platform", help="target platform tag, e.g. manylinux_2_28_x86_64 (default: this one)")
    args = parser.parse_args(argv)
    needed = [*requirements(args.files), *build_requirements()]
    args.out.mkdir(parents=True, exist_ok=True)
    if args.python_version or args.platform:
        collect_for_target(args.out, needed, args.python_version, args.platform)
    else:  # wheels from the index where there are any, built here from the source archive otherwise
        done = pip("wheel", "--no-deps", "-w", str(args.out), *needed)
        if done.returncode:
            raise SystemExit(f"wheelhouse: pip wheel failed:\n{done.stderr[-3000:]}")
    wheels = sorted(args.out.glob("*.whl"))
    size = sum(path.stat().st_size for path in wheels)
    print(f"wheelhouse: {len(wheels)} wheels, {size / 2**20:.0f} MiB in {args.out}; copy it with the repository, then "
          f"on the machine without network: make install [CUDA=12|13 | TPU=1] WHEELHOUSE=<that folder>")


if __name__ == "__main__":
    main()
