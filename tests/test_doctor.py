"""The prerequisite check: it finds the real tools and sources, and names what is missing with its fix."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from host import doctor


def _doctor(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "host.doctor", *args], capture_output=True, text=True, env=env)


def test_pins_are_the_folders_the_build_expects() -> None:
    folders = [folder for folder, _, _ in doctor.pins()]
    assert folders == ["tflite-micro", "flatbuffers", "gemmlowp", "ruy", "CMSIS_6", "CMSIS-NN", "Cortex_DFP", "kissfft"]
    assert all(len(commit) == 40 for _, _, commit in doctor.pins())


def test_a_partial_sources_folder_names_each_missing_source(tmp_path: Path) -> None:
    for folder in ("tflite-micro", "flatbuffers"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "README.md").write_text("x")
    (tmp_path / "ruy").mkdir()  # present but empty: not a copy
    check = doctor.check_sources(str(tmp_path))
    assert not check.ok
    assert "gemmlowp" in check.detail and "ruy" in check.detail and "kissfft" in check.detail
    assert "tflite-micro" not in check.detail.split("lacks")[1]


def test_a_missing_sources_folder_is_named(tmp_path: Path) -> None:
    check = doctor.check_sources(str(tmp_path / "nowhere"))
    assert not check.ok and "is not a folder" in check.detail


def test_the_corpus_check_counts_clips_and_names_a_broken_corpus(synthetic_corpus: Path, tmp_path: Path) -> None:
    check = doctor.check_corpus(str(synthetic_corpus))
    assert check.ok and check.detail.startswith("72 clips")
    shutil.copytree(synthetic_corpus, tmp_path / "casia")
    shutil.rmtree(tmp_path / "casia" / "wangzhe")
    broken = doctor.check_corpus(str(tmp_path / "casia"))
    assert not broken.ok and "wangzhe" in broken.detail


def test_without_the_cross_compiler_the_doctor_says_how_to_install_it(synthetic_corpus: Path, tmp_path: Path) -> None:
    # A PATH holding only python and the host compiler: the Arm toolchain, CMake and QEMU are then missing.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("gcc", "git"):
        found = shutil.which(tool)
        if found:
            (bin_dir / tool).symlink_to(found)
    env = {**os.environ, "PATH": str(bin_dir), "SER_DEPS_DIR": str(tmp_path / "nowhere")}
    result = _doctor("--data", str(synthetic_corpus), env=env)
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert any(line.startswith("MISSING  Arm cross-compiler: arm-none-eabi-gcc not found") for line in lines)
    assert all("bash scripts/bootstrap" in line for line in lines if "not found" in line)
    assert any(line.startswith("ok    CASIA corpus: 72 clips") for line in lines)
    assert lines[-1] == "4 prerequisite(s) missing"  # cross-compiler, CMake, QEMU, sources; the host gcc is there


def test_a_flashed_board_needs_no_emulator(synthetic_corpus: Path) -> None:
    names = [c.name for c in doctor.run_checks(str(synthetic_corpus), None, port="/dev/ttyACM0")]
    assert "QEMU" not in names


@pytest.mark.skipif(not os.environ.get("SER_DEPS_DIR"), reason="TFLM sources not given: set SER_DEPS_DIR")
def test_everything_found_here_exits_zero(synthetic_corpus: Path) -> None:
    result = _doctor("--data", str(synthetic_corpus), env=dict(os.environ))
    assert result.returncode == 0, result.stdout
    assert result.stdout.splitlines()[-1] == "all prerequisites found"
