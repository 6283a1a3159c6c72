"""sacam.keep_freed_memory: glibc keeps freed memory, so large tensors stop faulting pages in.

Each check runs in a fresh child process (the setting is process-wide and lasting) and
counts the child's minor page faults (``getrusage``) over ten 64 MiB tensors, each filled
and freed. The independent expectation: a freshly mapped tensor faults in every page it
touches once, so without the setting ten tensors fault at least half their pages in all;
with it, they reuse the pages of the first ones (three, filled before counting) and
fault fewer than one tensor has.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from sacam._speed.allocator import keep_freed_memory, on_glibc, user_configured_malloc

needs_glibc = pytest.mark.skipif(not on_glibc(), reason="glibc's mallopt is Linux/glibc only")

TENSOR_BYTES = 64 << 20
REPEATS = 10

CHILD = textwrap.dedent(
    """
    import json, resource, sys
    import torch
    from sacam._speed.allocator import keep_freed_memory
    setup = sys.argv[1]
    if setup == "keep":
        applied = keep_freed_memory()
    elif setup in ("entry", "main"):
        import sacam.cli
        applied = getattr(sacam.cli, setup)(sys.argv[2:])  # the command's exit code
    else:
        applied = None

    def tensor():
        t = torch.empty({n} // 4, dtype=torch.float32)
        t.fill_(1.0)  # touches every page
        del t

    for _ in range(3):  # the first ones fault their pages in either way
        tensor()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range({repeats}):
        tensor()
    print(json.dumps([applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before]))
    """
).format(n=TENSOR_BYTES, repeats=REPEATS)


def _page_bytes() -> int:
    """The pages a fresh anonymous mapping faults in: 2 MiB under THP "always", else 4 KiB."""
    thp = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    if thp.exists() and "[always]" in thp.read_text():
        return 2 << 20
    return resource.getpagesize()


def _child(*args: str, env: dict[str, str] | None = None) -> tuple[object, int]:
    drop = {"GLIBC_TUNABLES", "THP_MEM_ALLOC_ENABLE", "SACAM_KEEP_FREED_MEMORY"}
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k not in drop}
    out = subprocess.run(
        [sys.executable, "-c", CHILD, *args],
        env={**clean, "OMP_NUM_THREADS": "1", **(env or {})},
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    applied, faults = json.loads(out.stdout.strip().splitlines()[-1])
    return applied, int(faults)


@needs_glibc
def test_glibc_defaults_fault_every_large_tensor_in_afresh() -> None:
    applied, faults = _child("none")
    assert applied is None
    assert faults >= REPEATS * TENSOR_BYTES // _page_bytes() // 2, faults


@needs_glibc
def test_keep_freed_memory_reuses_the_pages_of_freed_tensors() -> None:
    applied, faults = _child("keep")
    assert applied is True
    assert faults < TENSOR_BYTES // resource.getpagesize(), faults


@needs_glibc
def test_the_sacam_command_keeps_freed_memory(tmp_path: Path) -> None:
    bad = tmp_path / "missing.png"  # the command gets past its arguments, then cannot read it
    args = ["explain", str(bad), "--method", "cam", "--out", str(tmp_path)]
    code, faults = _child("entry", *args)  # the console script and python -m sacam.cli
    assert code == 3
    assert faults < TENSOR_BYTES // resource.getpagesize(), faults
    code, faults = _child("main", *args)  # in a process of its caller's: left as it is
    assert code == 3
    assert faults >= REPEATS * TENSOR_BYTES // _page_bytes() // 2, faults


@needs_glibc
def test_the_opt_out_leaves_glibc_as_it_starts() -> None:
    applied, faults = _child("keep", env={"SACAM_KEEP_FREED_MEMORY": "0"})
    assert applied is False
    assert faults >= REPEATS * TENSOR_BYTES // _page_bytes() // 2, faults


@needs_glibc
def test_a_users_own_malloc_settings_are_left_alone() -> None:
    applied, faults = _child("keep", env={"MALLOC_MMAP_MAX_": "65536"})  # a user's own setting
    assert applied is False
    assert faults >= REPEATS * TENSOR_BYTES // _page_bytes() // 2, faults


@pytest.mark.parametrize(
    ("environ", "configured"),
    [
        ({}, False),
        ({"MALLOC_ARENA_MAX": "2"}, True),
        ({"MALLOC_TRIM_THRESHOLD_": "0"}, True),
        ({"GLIBC_TUNABLES": "glibc.malloc.mmap_max=0"}, True),
        ({"GLIBC_TUNABLES": "glibc.rtld.nns=8"}, False),
        ({"MALLOCX": "1"}, False),
    ],
)
def test_which_environments_configure_glibcs_allocator(
    environ: dict[str, str], configured: bool
) -> None:
    assert user_configured_malloc(environ) is configured


@pytest.mark.parametrize("keep_mb", [0, 2048, -1])
def test_keep_mb_out_of_range_is_refused(keep_mb: int) -> None:
    with pytest.raises(ValueError, match="keep_mb must be 1 to 2047"):
        keep_freed_memory(keep_mb)


def test_the_ray_actors_keep_freed_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both actors take over their worker process, as the CLI does its own: each sets it."""
    import torch

    from sacam.evaluation import BenchmarkConfig, ray_engine
    from sacam.evaluation.explain_folder import ExplainJob

    calls: list[str] = []
    monkeypatch.setattr(ray_engine, "keep_freed_memory", lambda: bool(calls.append("kept")))
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)  # this process keeps its own
    model = "tests.support.nets:colour_net"
    config = BenchmarkConfig(data_dir=tmp_path, out=tmp_path, model=model, image_size=32)
    ray_engine.BatchScorer(config, ["confidence"], {}, threads=1, device="cpu")
    assert calls == ["kept"]
    job = ExplainJob(data_dir=tmp_path, out=tmp_path, methods=("grad-cam",), model=model)
    ray_engine.FolderExplainer(job, threads=1, device="cpu")
    assert calls == ["kept", "kept"]
