"""The one prediction path: image -> probabilities on the image's grid -> instances.

    read -> :mod:`~competition.predict.preprocess` (RGB float, dark-on-light inversion,
    normalisation, padding by the training margin) -> :mod:`~competition.predict.forward`
    (tiles, TTA, blending, precision) -> :mod:`~competition.predict.members` (one member at its
    nucleus size, back on the image grid) -> :mod:`~competition.predict.ensemble` (routing by
    type, size passes, averaging) -> :mod:`competition.postprocess` (instances).

Training's validation and out-of-fold maps, tuning, holdout, submit, report and bench all
call it; nothing else runs a network, and nothing here imports training.
"""

from competition.predict.ensemble import EnsemblePredictor, PredictorTimings, Route, prefetch
from competition.predict.forward import (
    STRIDE,
    TTA_MODES,
    NetworkTimer,
    Tiling,
    blend_ramp,
    dihedral,
    inverse_dihedral,
    predict_network,
    resolve_device,
    set_threads,
    tile_starts,
    tta_transforms,
    window_size,
)
from competition.predict.members import LoadedMember, predict_member, predict_scaled

__all__ = [
    "EnsemblePredictor", "PredictorTimings", "Route", "prefetch", "STRIDE", "TTA_MODES",
    "NetworkTimer", "Tiling", "blend_ramp", "dihedral", "inverse_dihedral", "predict_network",
    "resolve_device", "set_threads", "tile_starts", "tta_transforms", "window_size",
    "LoadedMember", "predict_member", "predict_scaled",
]
