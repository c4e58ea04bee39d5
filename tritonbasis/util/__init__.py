"""Helpers every layer may use: atomic file writes and checksummed checkpoints
(:mod:`.fileio`), timing (:mod:`.timing`) and profiler ranges (:mod:`.ranges`). Imports no
other part of tritonbasis."""
