"""tools/kernel_counts.py's source lookup: a global load is an activation load when the kernel
statement it comes from carries the tag, read from the file a PTX ``.file`` names. Triton's
cache serves a kernel compiled in another clone under that clone's path, so the lookup must
land on this checkout's file whether that path is gone or holds another version."""

from __future__ import annotations

from pathlib import Path

import kernel_counts  # tools/kernel_counts.py (pyproject: pytest's pythonpath)

REPO = Path(__file__).resolve().parents[2]


def test_a_path_from_another_clone_reads_this_checkouts_file(tmp_path):
    here = REPO / "kernels" / "forward.py"
    gone = "/nonexistent/clone/kernels/forward.py"
    assert kernel_counts.source_in_this_checkout(gone) == str(here)
    # another clone that still exists, with an edited copy: this checkout's file all the same
    other = tmp_path / "clone" / "kernels" / "forward.py"
    other.parent.mkdir(parents=True)
    other.write_text("# an older version\n")
    assert kernel_counts.source_in_this_checkout(str(other)) == str(here)
    assert kernel_counts._tagged_statement_lines(kernel_counts.source_in_this_checkout(gone))


def test_a_path_outside_the_checkout_is_kept():
    outside = "/usr/lib/python3/site-packages/triton/language/standard.py"
    assert kernel_counts.source_in_this_checkout(outside) == outside
