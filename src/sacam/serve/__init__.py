"""``sacam serve``: a local web page to explain images and compare methods.

Needs the optional web dependencies (``pip install -e ".[serve]"``); ``import sacam``
never imports them. :func:`create_app` builds the FastAPI app around a loaded model;
:func:`serve` loads a model and runs the app with uvicorn.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Sequence

import uvicorn

from ..detection import DenseFormat
from ..errors import SacamError
from ..models import load_model
from .app import create_app

__all__ = ["create_app", "serve"]


def serve(
    model: str | None = None,
    *,
    weights: str | None = None,
    trust_model_file: bool = False,
    device: str = "cpu",
    host: str = "127.0.0.1",
    port: int = 8000,
    max_upload_mb: float = 20.0,
    max_queue: int = 8,
    allowed_hosts: Sequence[str] = (),
    task: str = "classification",
    dense: DenseFormat | None = None,
    size: int | None = None,
    class_names: Sequence[str] | None = None,
) -> None:
    """Load a model once and serve the page and API until interrupted.

    Args:
        model: as :func:`sacam.models.load_model` (default: EfficientNet-Lite0).
        weights: state dict for the model's architecture.
        trust_model_file: allow a model file that runs code while it loads (see
            :func:`sacam.models.load_model`).
        device: torch device of the model.
        host: address to listen on; the default, 127.0.0.1, is reachable from this
            machine only. The app has no authentication: do not expose it publicly.
        port: TCP port (0 picks a free one).
        max_upload_mb: largest upload accepted, in MiB.
        max_queue: requests that may wait for the model; more are answered 429.
        allowed_hosts: other host names the page may be reached by (``localhost``,
            ``127.0.0.1``, ``::1`` and ``host`` always are); a request that names
            another host is refused, so that no other site can reach the app through a
            name of its own that resolves to this machine.
        task: ``"classification"``, ``"detection"`` or ``"segmentation"`` (:func:`create_app`).
        dense: a detector's YOLO-style output format (:func:`create_app`).
        size: the side of the model's input (:func:`~sacam.models.load_model`).
        class_names: the class names (:func:`~sacam.models.load_model`).
    """
    if not 0 <= port <= 65535:
        raise SacamError(f"--port must be between 0 and 65535, got {port}")
    loaded = load_model(
        model, weights=weights, device=device, trust_model_file=trust_model_file, size=size,
        class_names=class_names,
    )  # fmt: skip
    hosts = [*allowed_hosts] + ([] if host in ("0.0.0.0", "::", "") else [host])
    app = create_app(
        loaded, max_upload_mb=max_upload_mb, max_queue=max_queue, allowed_hosts=hosts,
        task=task, dense=dense,
    )  # fmt: skip
    sock = _bind(host, port)
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    print(f"sacam serve: model {loaded.name} on {device}; open http://{shown}:{bound}/", flush=True)
    _notes(host, allowed_hosts)
    try:
        uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])
    finally:
        sock.close()


def _bind(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` (a clear error when it cannot be)."""
    sock: socket.socket | None = None
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        sock = socket.socket(infos[0][0], socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        if sock is not None:
            sock.close()
        raise SacamError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def _notes(host: str, allowed_hosts: Sequence[str]) -> None:
    """Warn of a page reachable from other machines."""
    if host not in ("127.0.0.1", "localhost", "::1"):
        print("sacam serve: note: the page has no authentication", file=sys.stderr)
    if host in ("0.0.0.0", "::") and not allowed_hosts:
        print(
            "sacam serve: note: listening on all interfaces, the page answers only to "
            "localhost; name this machine with --allowed-host NAME to reach it from elsewhere",
            file=sys.stderr,
        )
