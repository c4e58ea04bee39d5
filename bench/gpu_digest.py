"""Headlines of the GPU-session steps' results, for part<N>-summary.json and the end of the
output (bench/gpu_session.py): each digest is a small JSON-able value read from what a step
wrote (its log, a JSON file, the bench Markdown), so a window killed mid-way still says what
each finished step found."""

from __future__ import annotations

import json
import re
from pathlib import Path

_COUNTS = re.compile(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed|deselected)")
_VERBOSE = re.compile(r" (PASSED|FAILED|SKIPPED|ERROR|XFAIL|XPASS)\b")


def pytest_log(d: Path, log: Path) -> dict:
    """Counts from pytest's last summary line; from the per-test lines of ``-v`` when the
    step was killed before it (plus the first failures' ids)."""
    text = log.read_text(errors="replace")
    lines = text.splitlines()
    final = next((ln for ln in reversed(lines) if re.search(r"=+ .* in [\d.]+s", ln)), None)
    out: dict = {}
    if final:
        out = {
            k.rstrip("s") if k.startswith("error") else k: int(n) for n, k in _COUNTS.findall(final)
        }
        out["summary"] = final.strip("= ")
    else:
        for m in _VERBOSE.findall(text):
            key = m.lower().replace("xfail", "xfailed").replace("xpass", "xpassed")
            out[key] = out.get(key, 0) + 1
        out["summary"] = "no final line (killed?): counted per-test lines"
    failed = [
        ln.split(" ", 1)[1].split(" - ")[0] for ln in lines if ln.startswith(("FAILED ", "ERROR "))
    ]
    if failed:
        out["failures"] = failed[:15]
    return out


def json_file(rel: str):
    """A digest read from the ``digest`` entry of the JSON file ``rel`` in the step folder."""

    def read(d: Path, log: Path):
        p = d / rel
        if not p.is_file():
            return {"missing": rel}
        doc = json.loads(p.read_text())
        return doc.get("digest", {"keys": sorted(doc)[:20]})

    return read


def bench(name: str):
    """The "fused vs each provider" table of the bench Markdown in the step's folder."""

    def read(d: Path, log: Path):
        for md in sorted((d / name).glob("*.md")):
            lines = md.read_text().splitlines()
            i = next((k for k, ln in enumerate(lines) if "fused vs" in ln.lower()), None)
            if i is None:
                continue
            end = next(
                (k for k in range(i + 1, len(lines)) if lines[k].startswith("#")), len(lines)
            )
            return {"file": md.name, "table": [ln for ln in lines[i:end] if ln.strip()][:40]}
        return {"missing": f"{name}/*.md with a 'fused vs' table"}

    return read


def render(digest) -> str:
    """A digest as text: a bench table as its lines, anything else as compact JSON."""
    if isinstance(digest, dict) and "table" in digest:
        return "\n".join([digest.get("file", ""), *digest["table"]])
    return json.dumps(digest, default=str)
