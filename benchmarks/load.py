"""A bounded load test of ``sacam serve`` on localhost.

Usage:

    python benchmarks/load.py                                   # 60 requests, 4 at a time
    python benchmarks/load.py --requests 120 --concurrency 8 --method grad-cam --method sa-cam

It starts ``sacam serve`` (the default model, EfficientNet-Lite0) as a child process on
a free port of 127.0.0.1 and, in one run, measures:

- the floor: ``--floor`` sequential ``POST /api/explain`` requests, one at a time (after
  one warm-up request), whose median is the service time of one request;
- the load: ``--requests`` of the same request, ``--concurrency`` at a time, cycling
  through the four sample photos; every answer must be 200 with one map per method;
- ``GET /api/health`` latency while the load runs (the event loop stays free);
- the server's resident memory (``VmRSS`` of the child) after start-up, after the
  warm-up, and after the load, and its peak (``VmHWM``).

The model works on one thread, so requests queue: with ``c`` requests in flight the
expected latency is about ``c`` × the floor. The report prints p50/p95 against that
expectation. Needs ``pip install -e ".[serve,serve-test]"`` (httpx).

``--flood N`` then sends N uploads of a large PNG (``--flood-megapixels``, 36 by default:
a 1 MB file that decodes to 108 MB) to ``POST /api/jobs/explain`` with a slow method
(``--flood-method``, Score-CAM), all at once, against the server's bounded queue
(``--max-queue``); it reports how many were accepted (202) and refused (429, with
``Retry-After``), p50/p95 of the accepted requests, ``/api/health`` latency during the
flood, and the server's RSS before, at its peak during the flood and after every job was
cancelled, against the bound the server's limits set: RSS before, plus the uploads'
bodies, plus two decodes at a time (``sacam.serve.deps.DECODE_SLOTS``; one decode's
peak is measured in a child process with the server's own ``prepare_pixels``), plus
the flood method's memory budget (``max_memory_mb``), plus the queued jobs' model
inputs. A queue that kept decoded uploads would exceed it by a decoded picture per
waiting job.
"""

from __future__ import annotations

import argparse
import io
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch
from PIL import Image

from sacam.images import SAMPLE_IMAGES, sample_image
from sacam.registry import method_info
from sacam.serve.deps import DECODE_SLOTS

ROOT = Path(__file__).resolve().parents[1]


def rss_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a process, in KiB (Linux /proc)."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) with linear interpolation between order statistics."""
    s = sorted(values)
    pos = (len(s) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def start_server(args: argparse.Namespace) -> tuple[subprocess.Popen[str], str]:
    """Start ``sacam serve`` on a free port; return the process and its base URL."""
    cmd = [sys.executable, "-m", "sacam.cli", "serve", "--port", "0", "--device", args.device]
    cmd += ["--max-queue", str(args.max_queue)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if "open http://" not in line:
        proc.kill()
        raise SystemExit(f"the server did not start: {line!r}")
    base = line.rsplit(" ", 1)[1].rstrip("/")
    deadline = time.monotonic() + 120
    while True:
        try:
            httpx.get(base + "/api/health", timeout=5).raise_for_status()
            return proc, base
        except httpx.TransportError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise SystemExit("the server did not answer") from None
            time.sleep(0.1)


def main() -> None:
    """Run the load test and print a Markdown report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=60)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--floor", type=int, default=8, help="sequential requests (floor)")
    parser.add_argument("--method", action="append", help="method(s) (default: sa-cam)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--flood", type=int, default=0, help="large uploads sent at once")
    parser.add_argument("--flood-megapixels", type=float, default=36.0)
    parser.add_argument("--flood-method", default="score-cam")
    parser.add_argument("--max-queue", type=int, default=8, help="the server's --max-queue")
    args = parser.parse_args()
    methods = args.method or ["sa-cam"]

    images = []
    for name in SAMPLE_IMAGES:
        buf = io.BytesIO()
        sample_image(name).save(buf, format="JPEG", quality=90)
        images.append((f"{name}.jpg", buf.getvalue()))

    t_start = time.perf_counter()
    proc, base = start_server(args)
    start_s = time.perf_counter() - t_start
    try:
        m = _measure(proc, base, args, methods, images) if args.requests else None
        flood = _flood(proc, base, args) if args.flood else None
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    if m is not None:
        _report(args, methods, start_s, m)
    if flood is not None:
        _report_flood(args, flood)


def _measure(
    proc: subprocess.Popen[str],
    base: str,
    args: argparse.Namespace,
    methods: list[str],
    images: list[tuple[str, bytes]],
) -> dict[str, Any]:
    """The floor, the load's latencies and wall time, /api/health latencies, memory, errors."""
    mem_start = rss_kib(proc.pid)
    errors: list[str] = []

    def explain(k: int, client: httpx.Client) -> float:
        name, data = images[k % len(images)]
        t0 = time.perf_counter()
        r = client.post(
            "/api/explain",
            files={"image": (name, data, "image/jpeg")},
            data={"methods": methods},
        )
        elapsed = time.perf_counter() - t0
        if r.status_code != 200 or len(r.json()["maps"]) != len(methods):
            errors.append(f"{r.status_code}: {r.text[:200]}")
        return elapsed

    with httpx.Client(base_url=base, timeout=600) as client:
        explain(0, client)  # warm-up
        mem_warm = rss_kib(proc.pid)
        floor = [explain(k, client) for k in range(args.floor)]
    health: list[float] = []
    stop = threading.Event()
    poller = threading.Thread(target=_poll_health, args=(base, stop, health))
    clients = [httpx.Client(base_url=base, timeout=600) for _ in range(args.concurrency)]
    poller.start()
    t0 = time.perf_counter()
    with ThreadPoolExecutor(args.concurrency) as pool:
        latencies = list(
            pool.map(lambda k: explain(k, clients[k % args.concurrency]), range(args.requests))
        )
    wall = time.perf_counter() - t0
    stop.set()
    poller.join()
    for c in clients:
        c.close()
    mem = {"start": mem_start, "warm": mem_warm, "end": rss_kib(proc.pid)}
    return {
        "floor": floor,
        "latencies": latencies,
        "wall": wall,
        "health": health,
        "mem": mem,
        "errors": errors,
    }


def _poll_health(base: str, stop: threading.Event, health: list[float]) -> None:
    """Time ``GET /api/health`` every 0.1 s into ``health`` until ``stop`` is set."""
    with httpx.Client(base_url=base, timeout=60) as c:
        while not stop.is_set():
            t0 = time.perf_counter()
            c.get("/api/health").raise_for_status()
            health.append(time.perf_counter() - t0)
            time.sleep(0.1)


def _report(
    args: argparse.Namespace, methods: list[str], start_s: float, m: dict[str, Any]
) -> None:
    """Print the Markdown report; exit 1 when any request failed."""
    floor, latencies, wall, health, errors = (
        m["floor"],
        m["latencies"],
        m["wall"],
        m["health"],
        m["errors"],
    )
    mem_start, mem_warm, mem_end = m["mem"]["start"], m["mem"]["warm"], m["mem"]["end"]
    floor_ms = 1000 * statistics.median(floor)
    p50, p95 = (1000 * percentile(latencies, q) for q in (50, 95))
    print(f"# sacam serve load test: {args.requests} requests, {args.concurrency} at a time\n")
    print(
        f"Machine: {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} torch threads, torch {torch.__version__}, "
        f"device {args.device}; methods: {', '.join(methods)}; server start "
        f"(model load) {start_s:.1f} s.\n"
    )
    print("| measure | value |")
    print("|---|---|")
    print(f"| errors | {len(errors)} of {args.requests} |")
    print(f"| floor: one request alone (median of {args.floor}) | {floor_ms:.0f} ms |")
    print(f"| p50 latency under load | {p50:.0f} ms ({p50 / floor_ms:.2f} × floor) |")
    print(f"| p95 latency under load | {p95:.0f} ms ({p95 / floor_ms:.2f} × floor) |")
    print(
        f"| expected with one model thread ({args.concurrency} in flight) | "
        f"≈ {args.concurrency * floor_ms:.0f} ms ({args.concurrency} × floor) |"
    )
    print(f"| throughput | {args.requests / wall:.2f} requests/s |")
    print(
        f"| /api/health during the load (n = {len(health)}) | p50 "
        f"{1000 * percentile(health, 50):.1f} ms, max {1000 * max(health):.1f} ms |"
    )
    mib = 1 / 1024
    print(f"| RSS after start-up | {mem_start['VmRSS'] * mib:.0f} MiB |")
    print(f"| RSS after warm-up request | {mem_warm['VmRSS'] * mib:.0f} MiB |")
    print(
        f"| RSS after the load | {mem_end['VmRSS'] * mib:.0f} MiB "
        f"(+{(mem_end['VmRSS'] - mem_warm['VmRSS']) * mib:.0f} MiB over warm-up) |"
    )
    print(f"| peak RSS (VmHWM) | {mem_end['VmHWM'] * mib:.0f} MiB |")
    if errors:
        print("\nErrors:\n" + "\n".join(f"- {e}" for e in errors[:10]))
        raise SystemExit(1)


def large_png(megapixels: float) -> bytes:
    """A smooth colour ramp of about ``megapixels`` as PNG: small to send, large to decode."""
    w = int((megapixels * 1e6 * 1.44) ** 0.5)
    h = int(megapixels * 1e6 / w)
    y = np.linspace(0, 255, h, dtype=np.float32)[:, None]
    x = np.linspace(0, 255, w, dtype=np.float32)[None, :]
    planes = [y + 0 * x, x + 0 * y, (x + y) / 2]
    rgb = np.stack(planes, -1).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


_DECODE_PEAK = """
import sys
from pathlib import Path
from types import SimpleNamespace
from sacam.images import DEFAULT_MAX_PIXELS
from sacam.preprocess import Preprocess
from sacam.serve.inputs import prepare_pixels

data = Path(sys.argv[1]).read_bytes()
status = lambda: dict(
    line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines()
)
Path("/proc/self/clear_refs").write_text("5")  # the peak starts again from here
before = int(status()["VmRSS"].split()[0])
prepare_pixels(data, DEFAULT_MAX_PIXELS, SimpleNamespace(preprocess=Preprocess(size=224)))
print(int(status()["VmHWM"].split()[0]) - before)
"""


def decode_peak_kib(data: bytes) -> int:
    """Memory one upload takes while the server decodes and preprocesses it, in KiB.

    Measured in a child process (its peak RSS over its RSS before), with the server's own
    :func:`sacam.serve.inputs.prepare_pixels`.
    """
    with tempfile.NamedTemporaryFile(suffix=".png") as f:
        f.write(data)
        f.flush()
        done = subprocess.run(
            [sys.executable, "-c", _DECODE_PEAK, f.name], capture_output=True, text=True
        )
    if done.returncode != 0:
        raise SystemExit(f"measuring one decode failed: {done.stderr[-500:]}")
    return int(done.stdout.strip())


def reset_peak(pid: int) -> bool:
    """Restart a process's peak RSS (VmHWM) from its current RSS; ``False`` if not allowed."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _flood(proc: subprocess.Popen[str], base: str, args: argparse.Namespace) -> dict[str, Any]:
    """Send ``--flood`` large uploads at once; cancel what was accepted; measure memory."""
    data = large_png(args.flood_megapixels)
    decode = decode_peak_kib(data)
    before = rss_kib(proc.pid)
    peak_reset = reset_peak(proc.pid)
    health: list[float] = []
    stop = threading.Event()
    poller = threading.Thread(target=_poll_health, args=(base, stop, health))
    poller.start()

    def post(_k: int) -> tuple[int, float, str, str]:
        with httpx.Client(base_url=base, timeout=600) as c:
            t0 = time.perf_counter()
            r = c.post(
                "/api/jobs/explain",
                files={"image": ("big.png", data, "image/png")},
                data={"methods": [args.flood_method]},
            )
            job = r.json().get("job_id", "") if r.status_code == 202 else ""
            return r.status_code, time.perf_counter() - t0, job, r.headers.get("retry-after", "")

    with ThreadPoolExecutor(args.flood) as pool:
        answers = list(pool.map(post, range(args.flood)))
    peak_during = rss_kib(proc.pid)
    with httpx.Client(base_url=base, timeout=60) as c:
        for _status, _t, job, _retry in answers:
            if job:
                c.delete(f"/api/jobs/{job}")
        while c.get("/api/health").json()["jobs_pending"]:
            time.sleep(0.1)
    stop.set()
    poller.join()
    return {
        "bytes": len(data),
        "answers": answers,
        "health": health,
        "decode_kib": decode,
        "peak_reset": peak_reset,
        "mem": {"before": before, "during": peak_during, "after": rss_kib(proc.pid)},
    }


def flood_bound_kib(args: argparse.Namespace, f: dict[str, Any]) -> dict[str, int]:
    """The parts of the flood's memory bound, in KiB (see the module docstring)."""
    budget = method_info(args.flood_method).cls.option_defaults().get("max_memory_mb", 0)
    budget_mb = budget if isinstance(budget, int | float) else 0
    model_input = 3 * 224 * 224 * 4  # float32 pixels a queued job holds
    return {
        "RSS before": f["mem"]["before"]["VmRSS"],
        f"{args.flood} upload bodies (2 copies while read)": 2 * args.flood * f["bytes"] // 1024,
        f"{DECODE_SLOTS} decodes at a time": DECODE_SLOTS * f["decode_kib"],
        f"{args.flood_method}'s memory budget": int(budget_mb * 1024),
        f"{args.max_queue + 1} model inputs": (args.max_queue + 1) * model_input // 1024,
    }


def _report_flood(args: argparse.Namespace, f: dict[str, Any]) -> None:
    """Print the flood's Markdown report; exit 1 on an answer other than 202 or 429."""
    answers = f["answers"]
    accepted = [t for status, t, _job, _r in answers if status == 202]
    refused = [r for status, _t, _job, r in answers if status == 429]
    other = [status for status, _t, _job, _r in answers if status not in (202, 429)]
    mib = 1 / 1024
    print(
        f"\n# Flood: {args.flood} uploads at once of a {args.flood_megapixels:g} MP PNG "
        f"({f['bytes'] / 2**20:.1f} MiB), {args.flood_method}, --max-queue {args.max_queue}\n"
    )
    print("| measure | value |")
    print("|---|---|")
    print(f"| accepted (202) | {len(accepted)} |")
    print(f"| refused (429) | {len(refused)} (Retry-After: {', '.join(sorted(set(refused)))} s) |")
    print(f"| other answers | {len(other)} {other[:5]} |")
    if accepted:
        p50, p95 = (1000 * percentile(accepted, q) for q in (50, 95))
        print(f"| accepted requests: p50, p95 | {p50:.0f} ms, {p95:.0f} ms |")
    if f["health"]:
        p50, top = 1000 * percentile(f["health"], 50), 1000 * max(f["health"])
        n = len(f["health"])
        print(f"| /api/health during the flood (n = {n}) | p50 {p50:.1f} ms, max {top:.1f} ms |")
    mem = f["mem"]
    peak = mem["after"]["VmHWM"]
    since = "during the flood" if f["peak_reset"] else "since start-up"
    parts = flood_bound_kib(args, f)
    bound = sum(parts.values())
    print(f"| RSS before | {mem['before']['VmRSS'] * mib:.0f} MiB |")
    print(f"| peak RSS (VmHWM {since}) | {peak * mib:.0f} MiB |")
    print(f"| RSS after every job was cancelled | {mem['after']['VmRSS'] * mib:.0f} MiB |")
    print(f"| one decode's peak (measured apart) | {f['decode_kib'] * mib:.0f} MiB |")
    terms = " + ".join(f"{v * mib:.0f} ({k})" for k, v in parts.items())
    print(f"| bound: {terms} | {bound * mib:.0f} MiB |")
    print(f"| peak within the bound | {'yes' if peak <= bound else 'NO'} |")
    if other:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
