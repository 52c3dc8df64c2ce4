#!/usr/bin/env python3
"""Re-resolve requirements/{cuda12,cuda13,tpu}.txt: what ``jax[<variant>]`` adds to requirements/lock.txt.

    make lock-variants        # after changing the jax pin in requirements/lock.txt (needs network)

For each variant pip resolves ``jax[<variant>]==<locked jax>`` together with the lock (``--dry-run
--report``, nothing is installed), and the packages the lock does not already pin are written, with
their exact versions, under the file's header comment.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

REQUIREMENTS = Path(__file__).resolve().parents[1] / "requirements"
VARIANTS = ("cuda12", "cuda13", "tpu")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def locked() -> dict[str, str]:
    pins = {}
    for line in (REQUIREMENTS / "lock.txt").read_text().splitlines():
        match = re.match(r"([A-Za-z0-9_.-]+)==(\S+)", line)
        if match:
            pins[canonical(match.group(1))] = match.group(2)
    return pins


def resolve(variant: str, lock: dict[str, str]) -> list[str]:
    with tempfile.TemporaryDirectory() as scratch:
        report = Path(scratch) / "report.json"
        subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
                        "--disable-pip-version-check", "--report", str(report), "-r", str(REQUIREMENTS / "lock.txt"),
                        f"jax[{variant}]=={lock['jax']}"], check=True)
        installed = json.loads(report.read_text())["install"]
    return sorted(f"{canonical(item['metadata']['name'])}=={item['metadata']['version']}" for item in installed
                  if canonical(item["metadata"]["name"]) not in lock)


def main() -> None:
    lock = locked()
    for variant in VARIANTS:
        path = REQUIREMENTS / f"{variant}.txt"
        header = [line for line in path.read_text().splitlines() if line.startswith("#")]
        path.write_text("\n".join([*header, *resolve(variant, lock)]) + "\n")
        print(f"{path.name}: re-resolved for jax {lock['jax']}")


if __name__ == "__main__":
    main()
