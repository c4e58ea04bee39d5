"""Recipes: data, models, training and the layer-sensitivity search.

* :mod:`.data` -- the embedded digits and a local CIFAR-10 folder (never downloads);
* :mod:`.models` -- ``resnet18_cifar`` and torchvision models by name;
* :mod:`.train` -- the training loop (checkpoints, resume, DDP) and model measurements;
* :mod:`.search` -- the sensitivity search (probes, selection, final comparison, report);
* :mod:`.distributed` -- torchrun process groups, DDP, probes dealt over ranks.

Imports ``tritonbasis.conversion`` and below; nothing here is imported by the layers below.
Submodules load on first use (``import tritonbasis`` does not import torchvision or tqdm).
"""
