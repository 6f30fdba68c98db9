"""Training per-image-type UNet ensembles with segmentation-models-pytorch.

Modules:
    recipe: strict TOML recipes loaded into frozen dataclasses.
    augment: the albumentations pipelines (one table, ``PIPELINES``).
    dataset: random padded crops with per-sample seeding, targets and loss masks.
    model: building the network, encoder weights, normalisation and ``predict_probs``.
    losses: the masked BCE + soft Dice/Jaccard loss.
    loop: ``train_one_epoch``, ``evaluate`` and ``fit``.
    members: model folders, ``load_member`` and ``train_all`` ordering.
    distributed: torchrun / DistributedDataParallel helpers.
    plots: loss, score and learning-rate curves.

Only :mod:`recipe` is torch-free; import the others lazily from CLI code.
"""
