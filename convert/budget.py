"""Hold a model (before a build) or a firmware ELF (after one) against a board's flash and RAM.

Before a build: model bytes + the firmware's fixed cost in flash; arena + fixed cost in RAM.
After a build: the ELF's loadable segments, read with pyelftools: every byte stored in the file
goes to flash, every segment placed in RAM counts its full memory size (.data + .bss + stack/heap).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

BOARDS_FILE = Path(__file__).with_name("boards.json")
# What the firmware costs besides the model and the arena, until a build measures it: the
# firmware's aims (flash <= model + 64 KB, RAM <= arena + 16 KB) used as an allowance.
FIXED_FLASH_ALLOWANCE = 64 * 1024
FIXED_RAM_ALLOWANCE = 16 * 1024


@dataclass(frozen=True)
class Board:
    name: str
    part: str
    core: str
    clock_hz: int
    flash: int
    ram: int
    flash_origin: int
    ram_origin: int


def boards() -> dict[str, Board]:
    table = json.loads(BOARDS_FILE.read_text())
    return {
        name: Board(
            name,
            b["part"],
            b["core"],
            int(b["clock_hz"]),
            b["flash_kib"] * 1024,
            b["ram_kib"] * 1024,
            int(b["flash_origin"], 16),
            int(b["ram_origin"], 16),
        )
        for name, b in table.items()
        if not name.startswith("_")
    }


def board(name: str) -> Board:
    table = boards()
    if name not in table:
        raise KeyError(f"unknown board {name!r}; known boards: {', '.join(sorted(table))}")
    return table[name]


@dataclass(frozen=True)
class Line:
    """One budget line: what is used of a memory, and of what."""

    memory: str
    parts: dict[str, int]
    capacity: int

    @property
    def used(self) -> int:
        return sum(self.parts.values())

    @property
    def headroom(self) -> int:
        return self.capacity - self.used

    @property
    def fits(self) -> bool:
        return self.used <= self.capacity


def pre_build(
    b: Board, model_bytes: int, arena_bytes: int, fixed_flash: int = FIXED_FLASH_ALLOWANCE, fixed_ram: int = FIXED_RAM_ALLOWANCE
) -> list[Line]:
    return [
        Line("flash", {"model": model_bytes, "firmware (fixed)": fixed_flash}, b.flash),
        Line("RAM", {"arena": arena_bytes, "firmware (fixed)": fixed_ram}, b.ram),
    ]


def elf_usage(elf_path: Path, b: Board) -> list[Line]:
    """Flash and RAM of a linked firmware, from its program headers and sections."""
    from elftools.elf.elffile import ELFFile

    with open(elf_path, "rb") as f:
        elf = ELFFile(f)
        if elf["e_machine"] != "EM_ARM":
            raise ValueError(f"{elf_path}: not an ARM ELF ({elf['e_machine']})")
        flash_parts: dict[str, int] = {}
        ram_parts: dict[str, int] = {}
        for section in elf.iter_sections():
            flags, size, addr = section["sh_flags"], section["sh_size"], section["sh_addr"]
            if not flags & 0x2 or size == 0:  # SHF_ALLOC
                continue
            in_ram = b.ram_origin <= addr < b.ram_origin + max(b.ram, 1 << 24)
            if section["sh_type"] != "SHT_NOBITS":
                flash_parts[section.name] = flash_parts.get(section.name, 0) + size  # stored in the image
            if in_ram:
                ram_parts[section.name] = ram_parts.get(section.name, 0) + size
    return [Line("flash", flash_parts, b.flash), Line("RAM", ram_parts, b.ram)]


def table_md(lines: list[Line], title: str) -> str:
    rows = [
        f"### {title}",
        "",
        "| memory | used | capacity | headroom | fits | made of |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for line in lines:
        parts = ", ".join(f"{k} {v:,}" for k, v in sorted(line.parts.items(), key=lambda kv: -kv[1]))
        rows.append(
            f"| {line.memory} | {line.used:,} B ({line.used / 1024:.1f} KiB) | {line.capacity // 1024:,} KiB "
            f"| {line.headroom / 1024:,.1f} KiB | {'yes' if line.fits else '**NO**'} | {parts} |"
        )
    return "\n".join(rows) + "\n"
