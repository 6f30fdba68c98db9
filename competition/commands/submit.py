"""Predict every image of DATA_DIR/<stage>_test with a recipe's ensemble (routed per image
type, with the tuned post-processing), write OUT_DIR/<recipe>-<stage>-<UTC time>.csv (never
overwriting), validate it, and record everything in the .json beside it. Optionally upload it
to Kaggle (--kaggle or KAGGLE_SUBMIT=1) and score it against a solution file."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "predict the test set with a recipe's ensemble and write a validated submission"


def add_tiling_arguments(parser) -> None:
    """``--tile-size/--tile-overlap/--max-side/--batch-size`` (defaults: those of
    :class:`competition.predict.Tiling`, written out so building the parser imports no torch;
    a test checks they agree), read back by :func:`tiling_from_args`."""
    parser.add_argument("--tile-size", type=int, default=512, help="window side for large images (multiple of 32)")
    parser.add_argument("--tile-overlap", type=int, default=64, help="overlap of neighbouring windows (multiple of 32)")
    parser.add_argument("--max-side", type=int, default=1024, help="images with a side above this are tiled (validation predicted whole images up to 1024)")
    parser.add_argument("--batch-size", type=int, default=4, help="windows x TTA views per forward pass")


def tiling_from_args(args: argparse.Namespace):
    """The :class:`competition.predict.Tiling` of :func:`add_tiling_arguments`' options
    (a UserError for sizes off the stride)."""
    from competition.predict import Tiling

    return Tiling(tile_size=args.tile_size, overlap=args.tile_overlap, max_side=args.max_side, batch_size=args.batch_size)


#: The resizing options of :func:`add_sizing_arguments`: keywords of
#: :class:`competition.predict.EnsemblePredictor` (and of ``SubmitOptions``).
SIZING_OPTIONS = ("survey_range", "survey_upscale", "survey_rule", "nucleus_px", "max_upscale", "upscale_max_pixels", "size_max_pixels",
                  "rescale_tolerance", "shrink_range")


def add_sizing_arguments(parser) -> None:
    """The resizing options of the size-estimated passes (no defaults here: an option left out
    keeps the predictor's), read back by :func:`sizing_from_args`."""
    parser.add_argument("--survey-range", type=float, metavar="R",
                        help="the survey trusts its largest factor whose nuclei measure within R times the members' diameter (default: 1.6; 1: the closest view)")
    parser.add_argument("--survey-upscale", type=float, metavar="F",
                        help="the survey's enlarged view for images of small nuclei (default: 2; 0: none)")
    parser.add_argument("--survey-rule", choices=("fit", "confidence"),
                        help="which survey view the size estimate trusts: the one the members are surest of "
                             "(confidence, the default), or the largest that fits the members' diameter (fit)")
    parser.add_argument("--nucleus-px", type=float, metavar="PX",
                        help="nucleus diameter the size-estimated passes resize to (default: each member's nucleus_diameter; lower is faster)")
    parser.add_argument("--max-upscale", type=float, metavar="F",
                        help="largest resize factor of the size-estimated passes (default: 2)")
    parser.add_argument("--upscale-max-pixels", type=int, metavar="N",
                        help="the size-estimated passes up-scale an image to at most N pixels (default: 2000000; 0: no limit beyond --max-upscale)")
    parser.add_argument("--size-max-pixels", type=int, metavar="N",
                        help="the size passes of a larger image see four windows of N/4 pixels, not the whole image (default: 500000; 0: the whole image)")
    parser.add_argument("--shrink-range", type=float, metavar="R",
                        help="the final pass shrinks an image of large nuclei only until they measure R times the members' "
                             "diameter (default: 0, each member's training scale jitter, the top of the sizes it saw; "
                             "1: down to the diameter, the rule before 2026-12-06)")
    parser.add_argument("--rescale-tolerance", type=float, metavar="OCTAVES",
                        help="a size estimate within this many octaves of a pass's factors keeps them, and that pass is the identity view of the final one (default: 0.125; 0: exact factors only)")


def sizing_from_args(args: argparse.Namespace) -> dict:
    """The :data:`SIZING_OPTIONS` given on the command line, as predictor keywords."""
    return {k: getattr(args, k) for k in SIZING_OPTIONS if getattr(args, k) is not None}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--recipe", required=True, help="recipe name (models in MODELS/<recipe>/)")
    parser.add_argument("--data", type=Path, required=True, help="DATA_DIR holding <stage>_test/ and the sample submission")
    parser.add_argument("--stage", choices=("stage1", "stage2"), default="stage1", help="test stage")
    parser.add_argument("--models", type=Path, default=Path("models"), help="models folder")
    parser.add_argument("--out-dir", type=Path, default=Path("submissions"), help="where the CSV and its JSON go")
    pred = parser.add_argument_group("prediction")
    pred.add_argument("--tta", choices=("none", "flips", "d4"), default="none", help="test-time augmentation")
    pred.add_argument("--device", default="auto", help="auto, cpu or cuda")
    pred.add_argument("--engine", choices=("auto", "torch", "onnxruntime", "openvino"), default="auto",
                      help="what runs the network (auto: the fastest installed on the CPU, torch on CUDA)")
    add_tiling_arguments(pred)
    pred.add_argument("--threads", type=int, help="torch CPU threads (default: one per core; 1 is faster when the cores are busy with other work)")
    pred.add_argument("--size-passes", type=int, default=2, help="passes without TTA that estimate the nucleus size, for members trained at a nucleus_diameter")
    pred.add_argument("--survey-factors", type=float, nargs="+", metavar="F",
                      help="resize factors of the first nucleus-size pass (default: 1 0.5 0.25)")
    add_sizing_arguments(pred)
    pred.add_argument("--postprocess-workers", type=int, metavar="N",
                      help="threads post-processing one image while the network predicts the next (default: 1 on CUDA, 0 on the CPU)")
    pred.add_argument("--image-streams", type=int, metavar="N",
                      help="predictors working on different images at once, each on its share of the threads "
                           "(default: 2 on a CPU with OpenVINO or ONNX Runtime, else 1; the objects are the same)")
    pred.add_argument("--strict", action="store_true", help="an unreadable test image is an error (default: empty row, reported)")
    pred.add_argument("--cache-dir", default="build/predict-cache",
                      help="per-image results, so an interrupted run resumes where it stopped ('' disables)")
    after = parser.add_argument_group("after writing")
    after.add_argument("--solution", type=Path, help="score against this solution CSV and append to the leaderboard")
    after.add_argument("--leaderboard", type=Path, help="leaderboard CSV (default: OUT_DIR/leaderboard.csv)")
    after.add_argument("--kaggle", action="store_true", help="upload with the kaggle CLI (also: KAGGLE_SUBMIT=1)")
    after.add_argument("--message", help="upload message (default: recipe, stage, TTA, local CV)")
    after.add_argument("--crossfit", action="store_true",
                       help="post-process each image with the parameters tuned without its condition (make holdout)")
    after.add_argument("--calibration", type=Path, nargs="+",
                       help="with --solution: write the holdout calibration here; without: read it (or several, "
                            "the calibrations of several condition-out folds, pooled) and record expected_score")


def run(args: argparse.Namespace) -> int:
    from competition.submit import SubmitOptions, format_summary, make_submission

    tiling = tiling_from_args(args)
    options = SubmitOptions(
        recipe=args.recipe,
        data_dir=args.data,
        stage=args.stage,
        models_dir=args.models,
        out_dir=args.out_dir,
        tta=args.tta,
        device=args.device,
        tiling=tiling,
        strict=args.strict,
        solution=args.solution,
        leaderboard=args.leaderboard,
        kaggle=args.kaggle,
        message=args.message,
        threads=args.threads,
        size_passes=args.size_passes,
        crossfit=args.crossfit,
        calibration=tuple(args.calibration) if args.calibration else None,
        cache_dir=Path(args.cache_dir) if args.cache_dir else None,
        engine=args.engine,
        postprocess_workers=args.postprocess_workers,
        image_streams=args.image_streams,
        survey_factors=tuple(args.survey_factors) if args.survey_factors else None,
        **sizing_from_args(args),
    )
    result = make_submission(options)
    for line in format_summary(result):
        print(line)
    for line in result.report:
        print(line)
    return 0
