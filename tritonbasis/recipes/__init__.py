"""Recipes: data, models, training and the layer-sensitivity search.

* :mod:`.data` -- the embedded digits and a local CIFAR-10 folder (never downloads);
* :mod:`.models` -- ``resnet18_cifar`` and torchvision models by name;
* :mod:`.train` -- the training loop (checkpoints, resume, DDP), re-exporting its pieces:
  :mod:`.train_config` (config, result, parameter groups, schedule), :mod:`.checkpoint`
  (``last.pt`` and RNG state), :mod:`.evaluation` (``evaluate``, per-batch helpers) and
  :mod:`.measure` (parameter and MAC counts, step-time measurement);
* :mod:`.search` -- the sensitivity search, a package with one module per stage (config,
  state, baseline, probes, selection, final, report);
* :mod:`.distributed` -- torchrun process groups, DDP, probes dealt over ranks.

Within recipes the imports go ``search`` -> ``train`` -> ``distributed`` -> ``evaluation``
(the training loop and DDP evaluation share :mod:`.evaluation`, so neither imports the other).
Imports ``tritonbasis.conversion`` and below; nothing here is imported by the layers below.
Submodules load on first use (``import tritonbasis`` does not import torchvision or tqdm).
They need the ``[search]`` extra (numpy, SciPy, scikit-learn, tqdm, torchvision): without it,
importing this package raises one :class:`~tritonbasis.util.extras.MissingExtraError` naming it.
"""

from ..util.extras import require as _require

_require("search", "tritonbasis.recipes (the search, training, data and models)")
