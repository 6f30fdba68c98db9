"""Image streams: several predictors on different images at once, the same results as one."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from competition.errors import UserError
from competition.predict import engines as E
from competition.predict.streams import resolve_streams, run_streams, stream_threads

from test_submit import broken_world, cached_loader, options, read_rows, world  # noqa: F401 - fixtures

FAST = [e for e in ("onnxruntime", "openvino") if E._installed(e)]


class Busy:
    """A stand-in predictor that notices being used by two threads at once."""

    def __init__(self, name: str) -> None:
        self.name, self.lock, self.clashes, self.items = name, threading.Lock(), 0, []

    def __call__(self, item: int) -> tuple[int, str]:
        if not self.lock.acquire(blocking=False):
            self.clashes += 1
            self.lock.acquire()
        try:
            time.sleep(0.002 * (item % 4))  # uneven work: later items finish first
            self.items.append(item)
            return item * item, self.name
        finally:
            self.lock.release()


def test_streams_keep_the_items_order_and_never_share_a_predictor():
    predictors = [Busy("a"), Busy("b"), Busy("c")]
    out = list(run_streams(predictors, range(40), lambda p, item: p(item)))
    assert [item for item, _ in out] == list(range(40))
    assert [square for _, (square, _) in out] == [i * i for i in range(40)]
    assert sum(p.clashes for p in predictors) == 0
    assert sorted(i for p in predictors for i in p.items) == list(range(40))
    assert sum(1 for p in predictors if p.items) >= 2, "the work was spread over the streams"


def test_one_stream_works_in_the_callers_thread():
    caller = threading.get_ident()
    out = list(run_streams([Busy("a")], range(3), lambda p, item: threading.get_ident()))
    assert [ident for _, ident in out] == [caller] * 3


def test_an_error_in_a_stream_is_raised_at_its_item():
    def work(predictor, item):
        if item == 5:
            raise ValueError("item 5 is broken")
        return item

    seen = []
    with pytest.raises(ValueError, match="item 5 is broken"):
        for item, _ in run_streams([Busy("a"), Busy("b")], range(20), work):
            seen.append(item)
    assert seen == [0, 1, 2, 3, 4]


def test_the_number_of_streams_resolves_by_device_engine_and_threads():
    cpu = torch.device("cpu")
    assert resolve_streams(None, cpu, "torch", 2) == 1, "PyTorch's threads are one setting per process"
    assert resolve_streams(1, cpu, "torch", 8) == 1
    with pytest.raises(UserError, match="PyTorch's threads are one setting"):
        resolve_streams(2, cpu, "torch", 2)
    with pytest.raises(UserError, match=">= 1"):
        resolve_streams(0, cpu, "torch", 2)
    if FAST:
        assert resolve_streams(None, cpu, FAST[0], 2) == 2
        assert resolve_streams(None, cpu, FAST[0], 16) == 2, "more than 2 are not measured"
        assert resolve_streams(None, cpu, FAST[0], 1) == 1
        assert resolve_streams(3, cpu, FAST[0], 4) == 3
        with pytest.raises(UserError, match="at least as many CPU threads"):
            resolve_streams(3, cpu, FAST[0], 2)
    assert stream_threads(None, 1) is None
    assert stream_threads(4, 2) == 2
    assert stream_threads(3, 2) == 1


@pytest.mark.skipif(not FAST, reason="neither onnxruntime nor openvino installed")
def test_a_submission_of_two_streams_equals_one_of_one(world, tmp_path):  # noqa: F811 - the fixture
    from competition.submit import make_submission

    before = torch.get_num_threads()
    try:
        one = make_submission(options(world, tmp_path / "one", tta="flips", engine=FAST[0], threads=2,
                                      image_streams=1), loader=cached_loader)
        two = make_submission(options(world, tmp_path / "two", tta="flips", engine=FAST[0], threads=2),
                              loader=cached_loader)
    finally:
        torch.set_num_threads(before)
    assert one.record["image_streams"] == 1 and two.record["image_streams"] == 2
    assert read_rows(two.path) == read_rows(one.path)
    assert two.record["timings"]["network_by_pass"].keys() == one.record["timings"]["network_by_pass"].keys()
    assert two.record["timings"]["network_s"] > 0


@pytest.mark.skipif(not FAST, reason="neither onnxruntime nor openvino installed")
def test_the_bench_times_the_streams_and_finds_the_objects_of_one(world):  # noqa: F811 - the fixture
    from competition.bench_inference import bench_inference, bench_stage2

    before = torch.get_num_threads()
    try:
        runs = {n: bench_inference(world["models"], "standin", world["data"], tta=("flips",), device="cpu",
                                   loader=cached_loader, engine=FAST[0], threads=2, reference=None, streams=n)
                for n in (1, 2)}
        report = bench_stage2(world["models"], "standin", 3, every=2, device="cpu", loader=cached_loader,
                              engine=FAST[0], threads=2, streams=2)
    finally:
        torch.set_num_threads(before)
    one, two = runs[1][0], runs[2][0]
    assert (one.streams, two.streams) == (1, 2)
    assert two.n_objects == one.n_objects and two.n_images == one.n_images == 3
    assert "2 image streams" in two.line() and "image streams" not in one.line()
    assert report.streams == 2 and report.n_images == 3 and report.n_reference == 2
    assert 0 < report.fast_on_reference_s <= report.total_s
    assert "2 image streams" in report.lines()[0]


@pytest.mark.skipif(not FAST, reason="neither onnxruntime nor openvino installed")
def test_two_streams_give_an_unreadable_image_an_empty_row_and_strict_stops(broken_world, tmp_path, monkeypatch):  # noqa: F811
    """An image that turns unreadable after the shapes were read (so it reaches a stream)."""
    from competition import submit as S
    from competition.errors import DataError
    from competition.submit import make_submission

    victim = broken_world["victim"]
    real = S._read_shapes

    def shapes_before_the_damage(split, ids, strict):
        return real(split, [i for i in ids if i != victim], strict)[0] | {victim: (64, 64)}, {}

    monkeypatch.setattr(S, "_read_shapes", shapes_before_the_damage)
    before = torch.get_num_threads()
    try:
        result = make_submission(options(broken_world, tmp_path, engine=FAST[0], threads=2), loader=cached_loader)
        assert result.record["image_streams"] == 2
        assert [r for r in read_rows(result.path) if r[0] == victim] == [[victim, ""]]
        assert [p["image_id"] for p in result.record["problems"]] == [victim]
        with pytest.raises(DataError, match=victim):
            make_submission(options(broken_world, tmp_path / "strict", engine=FAST[0], threads=2, strict=True),
                            loader=cached_loader)
    finally:
        torch.set_num_threads(before)
