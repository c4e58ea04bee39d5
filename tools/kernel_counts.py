"""Counts read off a compiled kernel (part of the compile tier, ``tools/aot.py``): its main
loop's instructions per wgmma (SASS) and the bytes it loads from global memory per iteration
(PTX), split into activations and the rest. Nothing here assumes a kernel's structure beyond
two conventions:

* the **main loop** is the loop with the most tensor-core instructions among those that store
  nothing to global memory (an epilogue's loop over coefficient tiles stores its outputs);
  when none has any (a C_in loop of one block, unrolled away), the loop with the most among
  all (then its body includes the per-tile epilogue, less the epilogue's own loop);
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


def sass_instructions(sass: str) -> list[tuple[int, str, str]]:
    """``(address, opcode, operands)`` of every instruction of a ``cuobjdump -sass`` listing."""
    return [(int(m.group(1), 16), m.group(2), m.group(3)) for m in _SASS_LINE.finditer(sass)]


def _sass_loops(ins: list[tuple[int, str, str]]) -> list[list[tuple[int, str, str]]]:
    """Each loop's own instructions (those of loops nested in it left out): a backward
    branch and its target bound the loop."""
    ranges = []
    for addr, op, rest in ins:
        m = re.search(r"0x([0-9a-f]+)", rest) if op.startswith("BRA") else None
        if m and int(m.group(1), 16) < addr:
            ranges.append((int(m.group(1), 16), addr))
    loops = []
    for lo, hi in ranges:
        inner = [(a, b) for a, b in ranges if lo <= a and b <= hi and (a, b) != (lo, hi)]
        loops.append(
            [x for x in ins if lo <= x[0] <= hi and not any(a <= x[0] <= b for a, b in inner)]
        )
    return loops


def _main(loops: list, mma, stores):
    """The main loop (module doc): the most tensor-core instructions among the loops that
    store nothing; if none has any (its C_in loop unrolled away: a single block), among all."""
    for candidates in ([b for b in loops if not stores(b)], loops):
        best = max(candidates, key=mma, default=None)
        if best is not None and mma(best):
            return best
    return None


def sass_main_loop(sass: str) -> dict | None:
    """Instruction mix of the main loop body (module doc), or None without a loop."""
    body = _main(
        _sass_loops(sass_instructions(sass)),
        lambda b: sum(op.startswith("HGMMA") for _, op, _ in b),
        lambda b: any(op.startswith("STG") for _, op, _ in b),
    )
    if body is None:
        return None
    ops = Counter(op.split(".")[0] for _, op, _ in body if op != "NOP")
    n = sum(ops.values())
    return {
        "instructions": n,
        "wgmma": ops["HGMMA"],
        "instructions_per_wgmma": round(n / ops["HGMMA"], 1),
        "opcodes": dict(ops.most_common(12)),
    }


_PTX_LOC = re.compile(r"^\s*\.loc\s+(\d+)\s+(\d+)")
_PTX_FILE = re.compile(r'^\s*\.file\s+(\d+)\s+"([^"]+)"')


def _ptx_loops(lines: list[str]) -> list[list[int]]:
    """Line numbers of each loop's own blocks, from the loop comments LLVM writes on a block's
    first lines (``=>This Loop Header``, ``in Loop: Header=BB0_3``); a block starts at a
    ``$L__BB`` label or a ``// %bb.N:`` line and runs to the next one, and a loop's blocks need
    not be contiguous (rotated loops). A nested loop's blocks belong to it alone."""
    starts = [
        i for i, x in enumerate(lines) if re.match(r"\$L__BB\w+:", x) or x.startswith("// %bb.")
    ]
    loops: dict[str, list[int]] = {}
    for k, i in enumerate(starts):
        end = starts[k + 1] if k + 1 < len(starts) else len(lines)
        label = re.match(r"\$L__(BB\w+):", lines[i])
        header = None
        for j in range(i, end):
            if j > i and not lines[j].lstrip().startswith("//"):
                break
            m = re.search(r"in Loop: Header=(\w+)", lines[j])
            if m:
                header = m.group(1)
                break
            if "Loop Header" in lines[j] and label:
                header = label.group(1)
                break
        if header is not None:
            loops.setdefault(header, []).extend(range(i, end))
    return list(loops.values())


def _ptx_main_loop(lines: list[str]) -> list[int] | None:
    return _main(
        _ptx_loops(lines),
        lambda b: sum("wgmma.mma_async" in lines[i] or "mma.sync" in lines[i] for i in b),
        lambda b: any(re.search(r"\bst\.global", lines[i]) for i in b),
    )


def ptx_loop_loads(ptx: str, threads: int) -> dict | None:
    """Global bytes the main loop loads per iteration, per block (all threads):
    ``{"activations": B, "other": B, "instructions": n}``; None without a main loop."""
    lines = ptx.splitlines()
    loop = _ptx_main_loop(lines)
    if loop is None:
        return None
    # resolved here, once per .file: the lookup stats a path per suffix, and loads are many
    files = {
        int(m.group(1)): source_in_this_checkout(m.group(2))
        for m in map(_PTX_FILE.match, lines)
        if m
    }
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


_REPO = Path(__file__).resolve().parents[1]


def source_in_this_checkout(path: str) -> str:
    """The file a PTX ``.file`` names, as this checkout holds it. Triton's cache key holds a
    kernel's source and its first line number but not its file's path, so a kernel compiled
    from another clone (a CI clone, a worktree, since deleted or edited) comes back from the
    cache naming that clone's file. The same relative path here has the same kernel at the
    same lines (the key says so); outside this checkout (triton's own files) the path as is."""
    parts = Path(path).parts
    for i in range(1, len(parts)):
        candidate = _REPO.joinpath(*parts[i:])
        if candidate.is_file():
            return str(candidate)
    return path


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
