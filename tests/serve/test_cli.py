"""``sacam serve`` on the command line, and the optional extra staying optional."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sacam.cli import main
from tests.support.serve import free_port_socket, require

ROOT = Path(__file__).resolve().parents[2]


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT
    )


def test_import_sacam_does_not_import_the_web_stack() -> None:
    r = run_python(
        "import sys, sacam, sacam.cli, sacam.models, sacam.viz\n"
        "web = sorted(m for m in ('fastapi', 'starlette', 'uvicorn', 'pydantic') "
        "if m in sys.modules)\n"
        "print(web)"
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_serve_without_the_extra_is_a_one_line_exit_2() -> None:
    r = run_python(
        "import sys\n"
        "sys.modules['fastapi'] = None  # as if it were not installed\n"
        "from sacam.cli import main\n"
        "sys.exit(main(['serve']))"
    )
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("sacam: error: sacam serve needs the web dependencies")
    assert 'pip install -e ".[serve]"' in lines[0]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--max-upload-mb", "0"], "argument --max-upload-mb: 0 is not a positive number"),
        (["--max-upload-mb", "nan"], "argument --max-upload-mb: nan is not a positive number"),
        (["--port", "70000"], "argument --port: 70000 is not a TCP port (0..65535)"),
        (["--port", "-1"], "argument --port: -1 is below the minimum of 0"),
        (["--weights", "no/such.pth"], "argument --weights: no such file: 'no/such.pth'"),
    ],
)
def test_serve_bad_arguments_exit_2(args, message, capsys) -> None:  # noqa: ANN001
    with pytest.raises(SystemExit) as exc:
        main(["serve", *args])
    assert exc.value.code == 2
    assert capsys.readouterr().err.strip() == f"sacam: error: {message}"


def test_serve_on_a_busy_port_exit_2(capsys) -> None:  # noqa: ANN001
    require("fastapi")
    busy = free_port_socket()
    busy.listen()
    try:
        port = busy.getsockname()[1]
        code = main(["serve", "--port", str(port), "--model", "tests.support.nets:colour_net"])
    finally:
        busy.close()
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith(f"sacam: error: cannot listen on 127.0.0.1:{port}")


def test_serve_command_prints_the_url_and_answers() -> None:
    require("fastapi")
    httpx = require("httpx")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "sacam.cli", "serve", "--port", "0"]
    command += ["--model", "tests.support.nets:colour_net", "--max-upload-mb", "2"]
    command += ["--max-queue", "3", "--allowed-host", "sacam.test"]
    with subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as proc:
        try:
            line = proc.stdout.readline().strip()
            assert line.startswith("sacam serve: model tests.support.nets:colour_net on cpu; open ")
            url = line.rsplit(" ", 1)[1]
            assert url.startswith("http://127.0.0.1:") and url.endswith("/")
            deadline = time.monotonic() + 300  # a hang guard, not a speed test
            while True:
                try:
                    health = httpx.get(url + "api/health", timeout=10).json()
                    break
                except httpx.TransportError:
                    assert time.monotonic() < deadline and proc.poll() is None
                    time.sleep(0.05)
            assert health["status"] == "ok" and health["max_upload_mb"] == 2
            assert health["max_queue"] == 3
            # another site's name for this machine is refused; an allowed one is not
            for host, status in (("evil.example", 400), ("sacam.test:80", 200)):
                r = httpx.get(url + "api/health", headers={"host": host}, timeout=10)
                assert r.status_code == status
            assert "<title>sacam serve</title>" in httpx.get(url, timeout=10).text
        finally:
            proc.send_signal(signal.SIGINT)  # Ctrl+C
            try:
                proc.wait(timeout=60)
            finally:
                proc.kill()
        err = proc.stderr.read()
    assert proc.returncode == 0 and "Traceback" not in err, err


def test_serve_answers_to_the_address_it_listens_on() -> None:
    # bound to 127.0.0.2 (any loopback address), the page answers to that address and to
    # localhost, and refuses another host name
    require("fastapi")
    httpx = require("httpx")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "sacam.cli", "serve", "--host", "127.0.0.2", "--port", "0"]
    command += ["--model", "tests.support.nets:colour_net"]
    with subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as proc:
        try:
            url = proc.stdout.readline().strip().rsplit(" ", 1)[1]
            assert url.startswith("http://127.0.0.2:"), url
            port = url.rstrip("/").rsplit(":", 1)[1]
            deadline = time.monotonic() + 300  # a hang guard, not a speed test
            while True:
                try:
                    first = httpx.get(url + "api/health", timeout=10)
                    break
                except httpx.TransportError:
                    assert time.monotonic() < deadline and proc.poll() is None
                    time.sleep(0.05)
            assert first.status_code == 200  # Host: 127.0.0.2:PORT
            for host, status in ((f"localhost:{port}", 200), ("evil.example", 400)):
                r = httpx.get(url + "api/health", headers={"host": host}, timeout=10)
                assert r.status_code == status, host
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=60)
            finally:
                proc.kill()
