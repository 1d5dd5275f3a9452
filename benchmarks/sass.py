"""Read a compiled kernel's SASS (nvdisasm from the Triton wheel, with line info) and count, per thread, the
instructions a similarity kernel issues per pair outside its K loop, the MUFU (special-function) operations
per pair, and the instructions and MMAs per K step.

Instructions are attributed by their source line, which survives the compiler's loop transformations:
- K-loop instructions come from `_similarity_tile` / `_dot` (loads, address arithmetic, the MMA);
- epilogue instructions are every other instruction inside the kernel's loop, split into the hot path (what
  an interior tile runs) and the cold path: the bodies of the `if edge` / `if _edge_tile(...)` masks, the
  argmax search of `_best_column` and Triton's argmax reduction, and Circle's renewal of its references
  (`if ... > RENEW`), which run only on edge tiles, when a row of the block improves its best column, or
  when an entry passes its set's reference by 2^64 (a set's first entries, then rarely).
The counts are static (each instruction once, as a tile's code path runs it once); where the compiler made
several versions of the loop, the version that holds the MMAs is the one counted.
"""

from __future__ import annotations

import ast
import functools
import inspect
import re
import subprocess
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

MMA = ("HGMMA", "HMMA")


@dataclass
class Instruction:
    address: int
    text: str
    file: str
    line: int

    @property
    def opcode(self) -> str:
        return re.sub(r"^@!?U?P\w+\s+", "", self.text).split()[0]


def disassemble(cubin: bytes, nvdisasm: Path) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "kernel.cubin"
        path.write_bytes(cubin)
        return subprocess.run([str(nvdisasm), "-c", "-g", str(path)], capture_output=True, text=True, check=True).stdout


def parse(sass: str) -> tuple[list[Instruction], dict[str, int]]:
    """Instructions with their source (file name, line) and the address of every label."""
    out, labels, pending, source = [], {}, [], ("", 0)
    for raw in sass.splitlines():
        s = raw.strip()
        if m := re.match(r'//## File "(.*)", line (\d+)', s):
            source = (Path(m.group(1)).name, int(m.group(2)))
        elif m := re.match(r"(\.L_x_\d+):", s):
            pending.append(m.group(1))
        elif m := re.match(r"/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;", s):
            address = int(m.group(1), 16)
            labels.update((name, address) for name in pending)
            pending = []
            out.append(Instruction(address, m.group(2), *source))
    return out, labels


def loops(instructions: list[Instruction], labels: dict[str, int]) -> list[tuple[int, int]]:
    """(first, last) addresses of every loop: a branch back to a label at or before it."""
    found = []
    for ins in instructions:
        if ins.opcode == "BRA" and (m := re.search(r"(\.L_x_\d+)", ins.text)) and labels[m.group(1)] < ins.address:
            found.append((labels[m.group(1)], ins.address))
    return found


def _is_mma(ins: Instruction) -> bool:
    return ins.opcode.split(".")[0] in MMA


def _function_lines(fn) -> range:
    lines, first = inspect.getsourcelines(fn)
    return range(first, first + len(lines))


@functools.cache
def _source_classes() -> tuple[frozenset, frozenset]:
    """(K-loop lines, cold lines) of kernels.py, and the cold lines of Triton's standard.py (argmax)."""
    import triton.language.standard as standard

    from dcr_kernels.backends.triton import kernels

    k_loop = {("kernels.py", n) for f in (kernels._similarity_tile.fn, kernels._dot.fn) for n in _function_lines(f)}
    cold = {("kernels.py", n) for f in (kernels._candidates.fn, kernels._not_excluded.fn) for n in _function_lines(f)}
    tree = ast.parse(Path(kernels.__file__).read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.If):
            test = ast.unparse(node.test)
            if any(word in test for word in ("edge", "better", "RENEW")):
                cold |= {("kernels.py", n) for stmt in node.body for n in range(stmt.lineno, stmt.end_lineno + 1)}
    tree = ast.parse(Path(standard.__file__).read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and "argmax" in node.name:
            cold |= {("standard.py", n) for n in range(node.lineno, node.end_lineno + 1)}
        if isinstance(node, ast.Return) and "_reduce_with_indices" in ast.unparse(node):
            cold.add(("standard.py", node.lineno))
    return frozenset(k_loop), frozenset(cold)


def _cold_regions(body: list[Instruction], labels: dict[str, int], cold: frozenset) -> list[tuple[int, int]]:
    """[first, end) address ranges skipped by a conditional forward branch whose code comes mostly from cold
    source lines: its instructions are cold whatever line they carry (a reduction inside a cold branch is
    attributed to Triton's generic combine function)."""
    out = []
    for ins in body:
        target = re.search(r"(\.L_x_\d+)", ins.text) if ins.opcode == "BRA" and ins.text.startswith("@") else None
        if target is None or labels[target.group(1)] <= ins.address:
            continue
        first, end = ins.address + 1, labels[target.group(1)]
        ours = [i for i in body if first <= i.address < end and i.file == "kernels.py"]
        if ours and 2 * sum((i.file, i.line) in cold for i in ours) > len(ours):
            out.append((first, end))
    return out


def counts(sass: str, block_m: int, block_n: int, warps: int) -> dict:
    """Per-thread counts of one kernel's SASS: epilogue instructions per pair (hot path, and all paths),
    MUFU per pair on the hot path, K-loop instructions and MMA instructions per K step."""
    instructions, labels = parse(sass)
    k_lines, cold = _source_classes()
    found = loops(instructions, labels)
    with_mma = [lp for lp in found if any(lp[0] <= i.address <= lp[1] and _is_mma(i) for i in instructions)]
    if not with_mma:
        raise ValueError("no loop holds an MMA instruction")
    k_loop = min(with_mma, key=lambda lp: lp[1] - lp[0])
    outer = [lp for lp in found if lp[0] <= k_loop[0] and lp[1] >= k_loop[1] and lp != k_loop]
    if outer:  # a K loop inside the tile loop: what the tile loop runs outside it, prologue included
        first, last = min(outer, key=lambda lp: lp[1] - lp[0])
        body = [i for i in instructions if first <= i.address <= last]
        mainloop = [i for i in body if k_loop[0] <= i.address <= k_loop[1]]
        epilogue = [i for i in body if not k_loop[0] <= i.address <= k_loop[1]]
    else:  # one flattened loop: the K steps' instructions by their source lines
        body = [i for i in instructions if k_loop[0] <= i.address <= k_loop[1]]
        mainloop = [i for i in body if (i.file, i.line) in k_lines]
        epilogue = [i for i in body if (i.file, i.line) not in k_lines]
    regions = _cold_regions(body, labels, cold)
    hot = [i for i in epilogue if (i.file, i.line) not in cold and not any(a <= i.address < b for a, b in regions)]
    pairs = block_m * block_n / (32 * warps)
    ops = Counter(i.opcode.split(".")[0] for i in hot)
    return dict(
        epilogue_per_pair=len(hot) / pairs,
        epilogue_all_paths_per_pair=len(epilogue) / pairs,
        mufu_per_pair=ops["MUFU"] / pairs,
        k_step_instructions=len(mainloop),
        mma_per_k_step=sum(map(_is_mma, mainloop)),
        flattened=not outer,
        hot_opcodes=dict(ops.most_common()),
    )
