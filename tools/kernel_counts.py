"""Counts read off a compiled kernel (part of the compile tier, ``tools/aot.py``): its main
loop's instructions per wgmma (SASS) and the bytes it loads from global memory per iteration
(PTX), split into activations and the rest. Nothing here assumes a kernel's structure beyond
two conventions:

* the **main loop** is the loop with the most tensor-core instructions among those that store
  nothing to global memory (an epilogue's loop over coefficient tiles stores its outputs);
* a global load reads **activations** when the kernel source statement it comes from (PTX
  ``.loc``: a line of that statement) carries the comment ``# l2: activations``; every other
  global load in the loop (basis and coefficient tiles) counts as "other".

Bytes per load: ``cp.async`` its copy size, ``ld.global`` its vector width times element
width, both per thread (times the block's threads); a TMA copy (``cp.async.bulk.tensor``) the
bytes its mbarrier expects (``mbarrier.arrive.expect_tx`` just before it), once per block.
Loads a mask turns off are counted all the same: these are the bytes a full tile moves.
"""

from __future__ import annotations

import ast
import re
from collections import Counter
from pathlib import Path

TAG = "# l2: activations"

_SASS_LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)([^;]*);")
_SASS_BRA = re.compile(r"BRA\s+(?:`\(\.L_x_\d+\)|0x([0-9a-f]+))")


def sass_instructions(sass: str) -> list[tuple[int, str, str]]:
    """``(address, opcode, operands)`` of every instruction of a ``cuobjdump -sass`` listing."""
    return [(int(m.group(1), 16), m.group(2), m.group(3)) for m in _SASS_LINE.finditer(sass)]


def _sass_loops(ins: list[tuple[int, str, str]]) -> list[list[tuple[int, str, str]]]:
    loops = []
    for i, (addr, op, rest) in enumerate(ins):
        if not op.startswith("BRA"):
            continue
        m = re.search(r"0x([0-9a-f]+)", rest)
        if m and int(m.group(1), 16) < addr:
            target = int(m.group(1), 16)
            loops.append([x for x in ins[: i + 1] if x[0] >= target])
    return loops


def sass_main_loop(sass: str) -> dict | None:
    """Instruction mix of the main loop body (module doc), or None without a loop."""
    best = None
    for body in _sass_loops(sass_instructions(sass)):
        ops = Counter(op.split(".")[0] for _, op, _ in body if op != "NOP")
        if ops["STG"] or not ops["HGMMA"]:
            continue
        if best is None or ops["HGMMA"] > best["HGMMA"]:
            best = ops
    if best is None:
        return None
    n = sum(best.values())
    return {
        "instructions": n,
        "wgmma": best["HGMMA"],
        "instructions_per_wgmma": round(n / best["HGMMA"], 1),
        "opcodes": dict(best.most_common(12)),
    }


_PTX_LABEL = re.compile(r"^(\$L__\w+):")
_PTX_BRA = re.compile(r"\bbra(?:\.uni)?\s+(\$L__\w+);")
_PTX_LOC = re.compile(r"^\s*\.loc\s+(\d+)\s+(\d+)")
_PTX_FILE = re.compile(r'^\s*\.file\s+(\d+)\s+"([^"]+)"')


def _ptx_loops(lines: list[str]) -> list[list[int]]:
    """Line numbers of each loop's body, from the loop comments LLVM writes on block labels
    (``=>This Inner Loop Header``, ``in Loop: Header=BB0_3``): a block runs from its label to
    the next one, and the blocks of a loop need not be contiguous in the text (rotated)."""
    # basic blocks start at $L__BB labels ($L__tmp labels are debug-line markers)
    starts = [i for i, x in enumerate(lines) if x.startswith("$L__BB")]
    loops: dict[str, list[int]] = {}
    for k, i in enumerate(starts):
        label = _PTX_LABEL.match(lines[i].strip()).group(1)
        end = starts[k + 1] if k + 1 < len(starts) else len(lines)
        m = re.search(r"in Loop: Header=(\w+)", lines[i])
        if "Loop Header" in lines[i] and m is None:
            header = label.removeprefix("$L__")
        elif m:
            header = m.group(1)
        else:
            continue
        loops.setdefault(header, []).extend(range(i, end))
    return list(loops.values())


def _ptx_main_loop(lines: list[str]) -> list[int] | None:
    best, best_mma = None, 0
    for body in _ptx_loops(lines):
        text = [lines[i] for i in body]
        mma = sum("wgmma.mma_async" in x or "mma.sync" in x for x in text)
        if mma > best_mma and not any(re.search(r"\bst\.global", x) for x in text):
            best, best_mma = body, mma
    return best


def ptx_loop_loads(ptx: str, threads: int) -> dict | None:
    """Global bytes the main loop loads per iteration, per block (all threads):
    ``{"activations": B, "other": B, "instructions": n}``; None without a main loop."""
    lines = ptx.splitlines()
    loop = _ptx_main_loop(lines)
    if loop is None:
        return None
    files = {int(m.group(1)): m.group(2) for m in map(_PTX_FILE.match, lines) if m}
    tagged_lines: dict[str, set[int]] = {}

    def tagged(file_id: int, line_no: int) -> bool:
        path = files.get(file_id)
        if path is None:
            return False
        if path not in tagged_lines:
            tagged_lines[path] = _tagged_statement_lines(path)
        return line_no in tagged_lines[path]

    loc = (0, 0)  # the .loc in force (each block of a compiled kernel sets one early)
    out = {"activations": 0, "other": 0, "instructions": 0}
    expect = 0
    for line in (lines[i] for i in loop):
        m = _PTX_LOC.match(line)
        if m:
            loc = (int(m.group(1)), int(m.group(2)))
            continue
        nbytes = 0
        m = re.search(r"mbarrier\.arrive\.expect_tx\.\S+\s+\S+,\s*\[[^\]]+\],\s*(\d+);", line)
        if m:
            expect = int(m.group(1))
            continue
        if "cp.async.bulk.tensor" in line and ".global" in line:
            nbytes, expect = expect, 0
        elif re.search(r"\bcp\.async\.c[ag]\.shared\.global", line):
            nbytes = threads * int(re.search(r"\],\s*(0x[0-9a-f]+|\d+)", line).group(1), 0)
        else:
            m = re.search(r"\bld\.global(?:\.\w+)*?(?:\.v(\d))?\.[bfsu](\d+)\s", line)
            if m:
                nbytes = threads * int(m.group(1) or 1) * int(m.group(2)) // 8
        if nbytes:
            out["activations" if tagged(*loc) else "other"] += nbytes
            out["instructions"] += 1
    return out


def _tagged_statement_lines(path: str) -> set[int]:
    """Every line of every innermost statement of ``path`` that carries :data:`TAG` (a
    multi-line load's PTX location can be any of its lines)."""
    try:
        text = Path(path).read_text()
        tree = ast.parse(text)
    except (OSError, SyntaxError):
        return set()
    src = text.splitlines()
    out: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.stmt) and not hasattr(node, "body"):
            span = range(node.lineno, (node.end_lineno or node.lineno) + 1)
            if any(TAG in src[i - 1] for i in span):
                out.update(span)
    return out
