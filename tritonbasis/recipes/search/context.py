"""What every stage of a search works with, in one object instead of a dozen parameters."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...nn.spec import BasisSpec
from .config import SearchConfig

__all__ = ["Probe", "SearchContext"]

# A probe as the stages see it: (layers to convert together, fine-tuning steps) -> the
# zero-shot and probe accuracy drops (see .probes.probe); the orchestrator binds the baseline.
Probe = Callable[[list[str], int], dict]


@dataclass
class SearchContext:
    """One search's fixed inputs and its state (``state`` is a
    :class:`~tritonbasis.recipes.search.state.SearchState` on rank 0, a replica on the other
    ranks under torchrun)."""

    cfg: SearchConfig
    spec: BasisSpec
    train_data: Any
    val_data: Any
    out: Path
    state: Any
    shape: tuple[int, ...]  # one input image, (C, H, W)
    progress: bool = True
    log: Callable[[str], Any] = print

    def bar(self, it, **kw):
        """``it`` with a tqdm bar when ``progress``."""
        if not self.progress:
            return it
        from tqdm.auto import tqdm

        return tqdm(it, **kw)
