"""Add passing GPU results of ``bench/variants.py`` to ``kernels/verified.json``, the list the
launchers pick forward variants from by default (``tritonbasis.kernels.verified``).

    python tools/record_verified.py RESULT.json [RESULT.json ...]

A result counts only if it passed (``ok``), ran the full shapes (not ``--quick``) on a GPU
(``gpu``, ``capability``), and names the kernel source it checked (``source_hash``): the
launchers match an entry on the variant, compute capability, Triton version and that hash, so
an edit of the variant's kernel, the records or the pruning needs a new GPU run. Prints what it
added or why not; exits 1 if any result was refused.
"""

from __future__ import annotations

import json
import sys

from tritonbasis.kernels import verified


def entry(result: dict) -> dict:
    """The verified.json entry of a ``bench/variants.py`` result (ValueError if it does not
    qualify)."""
    if not result.get("ok"):
        raise ValueError("the variant did not pass")
    if result.get("quick") or not result.get("gpu") or not result.get("capability"):
        raise ValueError("not a full GPU run (--quick, or no GPU)")
    if result.get("variant") == "fwd":
        raise ValueError("v2 runs by default: nothing to record")
    return {
        "variant": result["variant"],
        "gpu": result["gpu"],
        "capability": result["capability"],
        "triton": result["triton"],
        "torch": result.get("torch"),
        "source_hash": result["source_hash"],
        "commit": result.get("commit"),
        "date": result.get("date"),
        "max_error": max(s["error"]["variant"] for s in result["shapes"]),
        "speedup_vs_v2": {
            s["name"]: round(s["time_ms"]["v2"] / s["time_ms"]["variant"], 3)
            for s in result["shapes"]
            if s.get("time_ms")
        },
    }


def main(argv=None) -> int:
    paths = sys.argv[1:] if argv is None else argv
    if not paths:
        print(__doc__)
        return 2
    refused = 0
    for path in paths:
        with open(path) as f:
            result = json.load(f)
        try:
            e = entry(result)
        except (ValueError, KeyError, TypeError) as err:
            print(f"{path}: not recorded: {err}")
            refused += 1
            continue
        verified.add(e)
        print(
            f"{path}: recorded {e['variant']} on {e['gpu']} (sm {e['capability']}, triton "
            f"{e['triton']}, source {e['source_hash']})"
        )
    return 1 if refused else 0


if __name__ == "__main__":
    sys.exit(main())
