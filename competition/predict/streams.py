"""Image streams: several predictors, each on its share of the CPU threads, predicting
different images at the same time.

One predictor at 2 threads leaves a core idle whenever the image's work is in Python
(normalising, blending the views, post-processing, encoding: about a third of the time on
stage-2-like images), and its small size-pass batches keep 2 threads poorly busy. Two
predictors of 1 thread each, on alternate images, keep both cores at work. The engines'
forwards release the GIL, as does most of NumPy, SciPy and OpenCV's work, so threads suffice
(measured on 2 AMX cores, 40 stage-2-like images with flips: one 2-thread predictor 53.7 s,
two 1-thread streams 38.4 s; two processes 40.0 s plus 3.9 s to start them). OpenVINO's
results are the same to the bit at 1 and 2 threads, so the streams change no object; the
engines must leave their threads unpinned (pinned, both streams put theirs on the first
core: 69.2 s).

PyTorch's thread count is one setting for the whole process, so the torch engine runs one
stream; ``auto`` gives 2 streams on a CPU of at least 2 threads whose engine is ONNX Runtime
or OpenVINO, else 1.
"""

from __future__ import annotations

import queue
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import torch

from competition.errors import UserError

__all__ = ["AUTO_STREAMS", "resolve_streams", "stream_threads", "build_predictors", "run_streams"]

#: streams that ``auto`` runs on a CPU with a fast engine (more than 2 are not measured).
AUTO_STREAMS = 2

T = TypeVar("T")
R = TypeVar("R")


def resolve_streams(streams: int | None, device: torch.device | str, engine: str, threads: int | None) -> int:
    """How many image streams to run.

    Args:
        streams: asked for (None: ``auto``).
        device: the predictors' device.
        engine: the engine asked for (``auto`` included; resolved here for the CPU).
        threads: the CPU threads in all (None: torch's, one per core).

    Raises:
        UserError: streams below 1; more than one on CUDA, with the torch engine, or more
            than there are threads.
    """
    from competition.predict.engines import resolve_engine
    from competition.predict.forward import resolve_device

    device = resolve_device(device)
    total = int(threads or torch.get_num_threads())
    fast = device.type == "cpu" and resolve_engine(engine, device, "bf16") != "torch" \
        and resolve_engine(engine, device, "fp32") != "torch"
    if streams is None:
        return min(AUTO_STREAMS, total) if fast else 1
    streams = int(streams)
    if streams < 1:
        raise UserError(f"image streams must be >= 1, got {streams}")
    if streams > 1 and not fast:
        raise UserError(f"{streams} image streams need the CPU and an ONNX Runtime or OpenVINO engine (engine "
                        f"{engine!r} on {device.type}): PyTorch's threads are one setting for the whole process")
    if streams > total:
        raise UserError(f"{streams} image streams need at least as many CPU threads, got {total}")
    return streams


def stream_threads(threads: int | None, streams: int) -> int | None:
    """Each stream's engine threads: the threads in all split evenly (None with one stream:
    the engine's default)."""
    if streams == 1:
        return threads
    return max(1, int(threads or torch.get_num_threads()) // streams)


def build_predictors(ensemble, streams: int | None = None, *, device: torch.device | str = "auto",
                     engine: str = "auto", threads: int | None = None, make: Callable | None = None,
                     **kwargs) -> list:
    """One predictor per image stream (``streams`` resolved by :func:`resolve_streams`), each
    on its share of ``threads``, OpenVINO's threads unpinned when there are several.

    ``make(ensemble, device=, engine=, threads=, pin_threads=, **kwargs)`` builds one (default
    :class:`~competition.predict.EnsemblePredictor`); ``kwargs``: its other arguments."""
    if make is None:
        from competition.predict.ensemble import EnsemblePredictor as make

    n = resolve_streams(streams, device, engine, threads)
    return [make(ensemble, device=device, engine=engine, threads=stream_threads(threads, n), pin_threads=n == 1,
                 **kwargs) for _ in range(n)]


_END = object()


def run_streams(predictors: Sequence[Any], items: Iterable[T], work: Callable[[Any, T], R]) -> Iterator[tuple[T, R]]:
    """``(item, work(predictor, item))`` for every item, in the items' order.

    With one predictor the items are worked one after another in the caller's thread. With
    several, each item goes to the next free predictor in a thread of its own; at most two
    items per predictor are under way or waiting, so a long run holds only a few results that
    are done but not yet yielded. An exception in ``work`` is raised here, at its item, after
    the items under way finish.
    """
    if len(predictors) == 1:
        for item in items:
            yield item, work(predictors[0], item)
        return
    free: queue.SimpleQueue = queue.SimpleQueue()
    for predictor in predictors:
        free.put(predictor)

    def task(item: T) -> R:
        predictor = free.get()
        try:
            return work(predictor, item)
        finally:
            free.put(predictor)

    pool = ThreadPoolExecutor(max_workers=len(predictors), thread_name_prefix="stream")
    try:
        pending: deque = deque()
        iterator = iter(items)
        for item in iterator:
            pending.append((item, pool.submit(task, item)))
            if len(pending) >= 2 * len(predictors):
                break
        while pending:
            item, future = pending.popleft()
            nxt = next(iterator, _END)
            if nxt is not _END:
                pending.append((nxt, pool.submit(task, nxt)))
            yield item, future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
