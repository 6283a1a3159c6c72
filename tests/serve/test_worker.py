"""The model thread: order, one thread, progress, cancellation, errors, hooks removed."""

from __future__ import annotations

import threading
import time

import pytest
import torch
from torch import nn

from tests.support.serve import require

require("fastapi")
from sacam.errors import LayerError  # noqa: E402
from sacam.serve.progress import JobCancelled, JobError, Progress  # noqa: E402
from sacam.serve.worker import ModelWorker  # noqa: E402


@pytest.fixture
def net() -> nn.Module:
    return nn.Sequential(nn.Linear(3, 2))


@pytest.fixture
def worker(net):  # noqa: ANN001, ANN201
    w = ModelWorker(net)
    yield w
    w.close()


def wait(job, timeout: float = 300.0) -> None:  # noqa: ANN001 (a hang guard)
    deadline = time.monotonic() + timeout
    while job.status in ("queued", "running"):
        assert time.monotonic() < deadline, f"job still {job.status}"
        time.sleep(0.005)


def test_jobs_run_in_order_on_one_thread(worker) -> None:  # noqa: ANN001
    seen: list[tuple[int, int]] = []
    jobs = [
        worker.submit("t", lambda _p, k=k: seen.append((k, threading.get_ident())) or k)
        for k in range(6)
    ]
    for job in jobs:
        wait(job)
    assert [k for k, _ in seen] == list(range(6))
    threads = {t for _, t in seen}
    assert len(threads) == 1 and threads != {threading.get_ident()}
    assert [j.result for j in jobs] == list(range(6))
    assert all(j.status == "done" and j.progress == 1.0 for j in jobs)


def test_equal_stages_count_progress_by_passes_within_each(worker, net) -> None:  # noqa: ANN001
    observed: list[float] = []
    submitted = threading.Event()

    def fn(p: Progress) -> None:
        assert submitted.wait(30)
        p.stages(2)
        p.stage(0, "first", 10)
        net(torch.zeros(5, 3))  # 5 of 10 images: half of stage 0 = a quarter of the job
        observed.append(worker_job.progress)
        p.stage(1, "second", 4)
        observed.append(worker_job.progress)
        net(torch.zeros(2, 3))  # 2 of 4: half of stage 1
        observed.append(worker_job.progress)
        net(torch.zeros(40, 3))  # more than expected: capped below the stage's end
        observed.append(worker_job.progress)
        assert worker_job.stage == "second"

    worker_job = worker.submit("t", fn)
    submitted.set()
    wait(worker_job)
    assert worker_job.status == "done", worker_job.error
    assert observed == pytest.approx([0.25, 0.5, 0.75, 0.995])
    assert worker_job.progress == 1.0


def test_cancel_a_running_job_stops_it_at_its_next_forward(worker, net) -> None:  # noqa: ANN001
    started = threading.Event()
    passes = []

    def endless(_p: Progress) -> None:
        while True:
            net(torch.zeros(1, 3))
            passes.append(1)
            started.set()
            time.sleep(0.001)

    job = worker.submit("t", endless)
    assert started.wait(30)
    worker.cancel(job.id)
    wait(job)
    assert job.status == "cancelled"
    with pytest.raises(JobCancelled):
        job.future.result()
    count = len(passes)
    time.sleep(0.05)
    assert len(passes) == count  # it really stopped
    assert not net._forward_pre_hooks and not net._forward_hooks  # the hook is gone
    after = worker.submit("t", lambda _p: net(torch.ones(1, 3)).shape)
    wait(after)
    assert after.result == torch.Size([1, 2])  # the thread still works


def test_cancel_a_queued_job_means_it_never_runs(worker) -> None:  # noqa: ANN001
    gate = threading.Event()
    ran = []
    first = worker.submit("t", lambda _p: gate.wait(30))
    second = worker.submit("t", lambda _p: ran.append(1))
    assert worker.pending() == 2
    worker.cancel(second.id)
    assert second.status == "cancelled"
    gate.set()
    wait(first)
    time.sleep(0.05)
    assert ran == [] and first.status == "done" and worker.pending() == 0


def test_errors_are_kept_with_a_status(worker) -> None:  # noqa: ANN001
    def bad_input(_p: Progress) -> None:
        raise LayerError("no layer named 'x'")

    def client_error(_p: Progress) -> None:
        raise JobError(413, "too big")

    def bug(_p: Progress) -> None:
        raise ZeroDivisionError("oops")

    jobs = [worker.submit("t", f) for f in (bad_input, client_error, bug)]
    for job in jobs:
        wait(job)
    assert [j.status for j in jobs] == ["error"] * 3
    assert [j.error for j in jobs] == [
        (400, "no layer named 'x'"),
        (413, "too big"),
        (500, "ZeroDivisionError: oops"),
    ]
    assert jobs[1].snapshot()["error"] == {"status": 413, "message": "too big"}


def test_finished_jobs_are_forgotten_beyond_the_limit(net) -> None:  # noqa: ANN001
    w = ModelWorker(net, max_jobs=3)
    try:
        jobs = []
        for k in range(6):
            jobs.append(w.submit("t", lambda _p, k=k: k))
            wait(jobs[-1])
        with pytest.raises(KeyError):
            w.get(jobs[0].id)
        assert w.get(jobs[-1].id).result == 5
    finally:
        w.close()
    with pytest.raises(RuntimeError, match="closed"):
        w.submit("t", lambda _p: None)


def test_forget_drops_finished_jobs_only(worker) -> None:  # noqa: ANN001
    gate = threading.Event()
    running = worker.submit("t", lambda _p: gate.wait(30))
    worker.forget(running.id)
    assert worker.get(running.id) is running  # still running: kept
    gate.set()
    wait(running)
    worker.forget(running.id)
    with pytest.raises(KeyError):
        worker.get(running.id)


TAIL_AND_COSTLY = ["ablation-cam", "fd-cam", "recipro-cam", "opti-cam", "group-cam", "sess"]


@pytest.mark.parametrize(
    ("method", "layer"),
    [(m, layer) for m in TAIL_AND_COSTLY for layer in (None, "_blocks.15")]
    + [("poly-cam", "_blocks.15")],  # the page always names a layer: one Poly-CAM stage
)
def test_progress_of_a_method_ends_near_its_stages_end(default_model, method, layer) -> None:  # noqa: ANN001
    # the tail methods feed the model one image and widen the batch at the layer, so
    # counting the model's inputs saw 2-4 images of an expected 50-2,562; the worker
    # counts output rows, and the estimate follows each method's own row count
    from sacam.api import build_method

    model = default_model.model
    options = {
        "opti-cam": {"steps": 5},
        "group-cam": {"groups": 8},
        "sess": {"scales": [224, 288]},
        "poly-cam": {"top_channels": 40},
    }.get(method, {})
    cam = build_method(model, method, layer, **options)
    shape = (1, 320, 7, 7) if layer is not None else (1, 1280, 7, 7)
    # rows after the engine's pass: one per edited channel (two for FD-CAM), per position
    # (Recipro-CAM), per Adam step (Opti-CAM), per group plus the blurred image (Group-CAM),
    # per window scored and explained (SESS: 224-px windows, 1 at scale 224 and 2 × 2 at
    # 288, where the second window of a side is shifted back inside)
    rows = {
        "sess": 2 * (1 + 4),
        "poly-cam": 2 * 40,  # plus-minus: each kept channel's mask and its complement
        "ablation-cam": shape[1],
        "fd-cam": 2 * shape[1],
        "recipro-cam": 49,
        "opti-cam": 5,
        "group-cam": 8 + 1,
    }
    g = torch.Generator().manual_seed(0)
    x = default_model.preprocess.normalize(torch.rand(1, 3, 224, 224, generator=g))
    cam.explain(x, torch.tensor([1]))  # a first call may probe the tail's memory first
    inputs: list[int] = []
    count_inputs = model.register_forward_pre_hook(lambda _m, a: inputs.append(a[0].shape[0]))
    w = ModelWorker(model)
    ratios: list[float] = []

    def fn(p: Progress) -> None:
        p.stages(1)
        p.stage(0, method, cam.expected_rows(shape, (224, 224)))
        cam.explain(x, torch.tensor([1]))
        ratios.append(p._job._seen / p._job._expected)  # this job's own counts

    try:
        job = w.submit("t", fn)
        wait(job, 120)
    finally:
        w.close()
        count_inputs.remove()
    assert job.status == "done", job.error
    assert job._expected == pytest.approx(rows[method], abs=2)
    assert 0.95 <= ratios[0] <= 1.05, ratios  # the bar ends where the stage does
    if method in ("ablation-cam", "fd-cam", "recipro-cam"):
        assert sum(inputs) * 10 < rows[method]  # the inputs alone said under a tenth


def test_passes_of_a_call_come_from_its_output_then_its_input() -> None:
    from sacam.serve.progress import passes_in

    two = torch.zeros(2, 3)
    assert passes_in({"logits": torch.zeros(7, 5), "aux": two}, (two,)) == 7
    assert passes_in((torch.zeros(4, 5), two), (two,)) == 4
    assert passes_in("not a tensor", (torch.zeros(6, 3),)) == 6
    assert passes_in(None, ()) == 1


def test_a_planned_job_counts_progress_by_passes(worker, net) -> None:  # noqa: ANN001
    # stages of 10 and 30 planned passes: a stage weighs the passes it makes, and a
    # finished stage counts those it really made (5 here), so the plan shrinks to 35
    observed: list[tuple[float, int, int]] = []
    submitted = threading.Event()

    def seen() -> None:
        observed.append((job.progress, job.passes_done, job.passes_planned))

    def fn(p: Progress) -> None:
        assert submitted.wait(30)
        p.plan([10, 30])
        p.stage(0, "fast", 10)
        net(torch.zeros(5, 3))
        seen()
        p.stage(1, "slow", 30)
        seen()
        net(torch.zeros(15, 3))
        seen()
        p.publish({"so far": 1})
        snapshot = worker.describe(job)
        assert snapshot["partial"] == {"so far": 1}
        assert (snapshot["passes_done"], snapshot["passes_planned"]) == (20, 35)
        assert snapshot["eta_s"] is not None and snapshot["elapsed_s"] >= 0
        net(torch.zeros(40, 3))  # more than planned: the plan grows, never below the count
        seen()

    job = worker.submit("t", fn)
    submitted.set()
    wait(job)
    assert job.status == "done", job.error
    assert observed == [(5 / 40, 5, 40), (5 / 35, 5, 35), (20 / 35, 20, 35), (0.999, 60, 60)]
    # done: the plan is what was made
    assert (job.progress, job.passes_done, job.passes_planned) == (1.0, 60, 60)
    assert "partial" not in worker.describe(job) and worker.describe(job)["result"] is None
    assert worker.seconds_per_pass is not None and worker.seconds_per_pass > 0


def test_the_estimate_is_the_passes_left_at_the_rate_so_far(net) -> None:  # noqa: ANN001
    from sacam.serve.progress import Job

    job = Job(id="j", kind="t", status="running", seconds_per_pass=0.5)
    p = Progress(job)
    p.plan([4, 6])
    assert job.eta() == pytest.approx(5.0)  # no pass yet: 10 passes at the measured rate
    job.started = time.monotonic() - 2.0  # 2 s and 4 passes: 0.5 s a pass, 6 left
    p.count(4)
    assert job.eta() == pytest.approx(3.0, rel=0.05)
    job.status = "done"
    assert job.eta() is None


def test_a_cancelled_waiting_job_lets_go_of_its_input(worker) -> None:  # noqa: ANN001
    import gc
    import weakref
    from functools import partial

    class Picture:  # stands for a large input the job would have worked on
        pass

    gate = threading.Event()
    first = worker.submit("t", lambda _p: gate.wait(30))
    picture = Picture()
    alive = weakref.ref(picture)
    waiting = worker.submit("t", partial(lambda pic, _p: pic, picture))
    del picture
    worker.cancel(waiting.id)
    gc.collect()
    assert alive() is None  # freed while the queue still holds the cancelled job
    assert worker.get(waiting.id).status == "cancelled"
    gate.set()
    wait(first)


def test_a_bounded_queue_refuses_with_a_retry_time(net) -> None:  # noqa: ANN001
    from sacam.serve.worker import QueueFull

    w = ModelWorker(net, max_queue=1)
    gate = threading.Event()
    try:
        running = w.submit("t", lambda _p: gate.wait(30))
        wait_for = time.monotonic() + 30
        while running.status != "running":
            assert time.monotonic() < wait_for
            time.sleep(0.005)
        queued = w.submit("t", lambda _p: None)
        assert w.queue_position(queued) == 1 and w.queue_position(running) == 0
        with pytest.raises(QueueFull) as refused:
            w.submit("t", lambda _p: None)
        assert refused.value.status == 429 and 1 <= refused.value.retry_after <= 60
        assert refused.value.headers == {"Retry-After": str(refused.value.retry_after)}
    finally:
        gate.set()
        w.close()
