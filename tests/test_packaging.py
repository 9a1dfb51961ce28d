"""What the wheel ships: the library and its data files, none of the project's own tooling."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel_files(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
                    "-w", str(out), str(ROOT)], check=True, capture_output=True, timeout=300)
    (wheel,) = out.glob("mailbox_flow-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        return archive.namelist()


@pytest.mark.parametrize("path", [
    "mailbox_flow/__init__.py",
    "mailbox_flow/py.typed",
    "mailbox_flow/migrations/script.py.mako",
    "mailbox_flow/mailivery/_async/client.py",
    "mailbox_flow/mailivery/_sync/client.py",
    "mailbox_flow/testing.py",
])
def test_wheel_ships_the_library(wheel_files: list[str], path: str) -> None:
    assert path in wheel_files


def test_wheel_ships_no_tooling(wheel_files: list[str]) -> None:
    """The doc generator, the resilience harness, the load generator and the unasync script live in
    the repository's tools/, not in the wheel; nor do the tests, benchmarks and stress scripts."""
    top = {name.split("/", 1)[0] for name in wheel_files}
    assert top <= {"mailbox_flow"} | {n for n in top if n.endswith(".dist-info")}, top
    moved = [n for n in wheel_files if Path(n).stem in ("_docgen", "_resilience", "loadtest", "unasync")]
    assert moved == []
