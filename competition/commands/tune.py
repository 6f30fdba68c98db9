"""Tune the post-processing of a recipe's ensemble per image type, on the members' out-of-fold
probability maps (``oof.npz``) and the true labels of the training split, by the competition
score. Prints the score before (default parameters) and after per type, and writes the tuned
parameters into ``MODELS/<recipe>/ensemble.json`` (built from the finished members when
absent)."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "tune the watershed post-processing per image type on out-of-fold maps"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--recipe", required=True, help="recipe name (models are in MODELS/<recipe>/)")
    parser.add_argument("--models", type=Path, default=Path("models"), help="models folder")
    parser.add_argument("--data", type=Path, help="DATA_DIR with stage1_train (default: the one recorded in the members' config.json)")
    parser.add_argument("--types", nargs="+", metavar="TYPE", help="tune only these entries (all, fluorescence, histology, brightfield)")
    parser.add_argument("--rounds", type=int, default=2, help="coordinate-descent rounds over the grid")
    parser.add_argument("--dry-run", action="store_true", help="print the scores, do not write the ensemble file")
    parser.add_argument("--folds", type=Path, default=None,
                        help="condition-out folds CSV: also cross-fit the tuning over whole conditions (out-of-sample score)")
    parser.add_argument("--colour-views", default="",
                        help="candidate colour views for test-time augmentation, comma- or space-separated "
                             "(gray, gbr, brg): kept per image type where averaging them scores better "
                             "(cross-fitted with --folds); empty: none")
    parser.add_argument("--average-with-all", action="store_true",
                        help="where a type has its own members, also try them averaged with the all-type ones "
                             "(kept where that scores best, cross-fitted with --folds; costs a second network "
                             "on that type's images at prediction)")
    parser.add_argument("--other-folds", type=Path, nargs="+", default=(), metavar="MODELS_DIR",
                        help="models folders holding the same recipe trained on other folds (make train-all "
                             "TRAIN_FOLD=N MODELS=MODELS_DIR): their out-of-fold maps join the tuning and its "
                             "cross-fitting, so it sees the conditions of every fold")
    parser.add_argument("--size-units", choices=("image", "network"), default="image",
                        help="count the tuned pixel sizes (min_seed_size, min_size, seed_dilation, grow) in the image's "
                             "own pixels (default), or in the pixels of the network's input, which follow each "
                             "image's resize factor")


def run(args: argparse.Namespace) -> int:
    import time

    from competition.ensemble import load_ensemble
    from competition.ensemble_tuning import tune_ensemble
    from competition.errors import UserError
    from competition.predict.preprocess import check_colour_views

    views = args.colour_views.replace(",", " ").split()
    try:
        check_colour_views(views, "--colour-views")
    except ValueError as exc:
        raise UserError(str(exc)) from None
    started = time.perf_counter()
    ensemble = load_ensemble(args.models, args.recipe)
    if ensemble.refit is not None:
        raise UserError(f"{ensemble.path} is a refit of {ensemble.refit['of']}: its members trained on every "
                        "image, so they have no out-of-fold maps; tune that ensemble, then rerun `make refit`")
    if ensemble.adapt is not None:
        raise UserError(f"{ensemble.path} is {ensemble.adapt['of']} adapted to pseudo-labels, with that ensemble's "
                        "post-processing: tune that ensemble, then rerun `make adapt`")
    if args.other_folds:
        from competition.oof import with_other_folds

        ensemble = with_other_folds(ensemble, args.other_folds)
        print("out-of-fold maps also from " + ", ".join(map(str, ensemble.other_folds)))
    for line in ensemble.describe():
        print(f"ensemble {line}")
    conditions = None
    if args.folds is not None and args.folds.is_file():
        from competition.data.folds import read_folds

        frame = read_folds(args.folds)
        if "condition" in frame.columns:
            conditions = dict(zip(frame["ImageId"], frame["condition"]))
        else:
            print(f"{args.folds} has no condition column (random folds): not cross-fitted")
    ensemble, outcomes = tune_ensemble(
        ensemble, data_dir=args.data, n_rounds=args.rounds, entries=args.types, write=not args.dry_run,
        conditions=conditions, colour_views=views, size_units=args.size_units,
        average_with_all=args.average_with_all,
    )
    for t in outcomes:
        if t.result is None:
            print(f"{t.entry:<13} not tuned: {t.note}")
            continue
        r = t.result
        params = ", ".join(f"{k}={v}" for k, v in t.params.items())
        note = f"; {t.note}" if t.note else ""
        print(f"{t.entry:<13} {r.n_images:4d} images  score {r.score_before:.4f} -> {r.score_after:.4f}  ({params}){note}")
        crossfit = t.crossfit
        if crossfit and crossfit.get("score") is not None:
            print(f"{'':<13} cross-fitted over {crossfit['n_parts']} parts of whole conditions (out of sample): "
                  f"{crossfit['score']:.4f}  parts {crossfit['part_scores']}")
        if t.choice:
            c = t.choice
            both = "both_score" in c
            by = (f"; cross-fitted {c['own_crossfit']:.4f} vs {c['all_crossfit']:.4f}"
                  + (f" vs {c['both_crossfit']:.4f}" if both else "") if c.get("by") == "crossfit" else "")
            print(f"{'':<13} own members {c['own_score']:.4f} vs all-type model {c['all_score']:.4f}"
                  + (f" vs both averaged {c['both_score']:.4f}" if both else "")
                  + f" tuned{by}: kept {c['kept']} (by the {c.get('by', 'tuned')} scores)")
        if t.views:
            v = t.views
            if v.get("n_colour_images"):
                by = (f"; cross-fitted {v['views_crossfit']:.4f} vs {v['plain_crossfit']:.4f}"
                      if v.get("by") == "crossfit" else "")
                kept = ", ".join(v["kept"]) or "none"
                print(f"{'':<13} colour views {', '.join(v['candidates'])} on {v['n_colour_images']} colour image(s): "
                      f"tuned {v['views_score']:.4f} vs {v['plain_score']:.4f} without{by}: kept {kept}")
            else:
                print(f"{'':<13} colour views: {v.get('note', 'no colour image')}")
    where = "not written (--dry-run)" if args.dry_run else f"written to {ensemble.path}"
    print(f"tuned parameters {where} in {time.perf_counter() - started:.0f} s")
    return 0
