"""``sacam serve``: a local web page to explain images and compare methods.

Needs the optional web dependencies (``pip install -e ".[serve]"``); ``import sacam``
never imports them. :func:`create_app` builds the FastAPI app around a loaded model;
:func:`serve` loads a model and runs the app with uvicorn.
"""

from __future__ import annotations

import socket
import sys

import uvicorn

from ..errors import SacamError
from ..models import load_model
from .app import DEFAULT_MAX_PIXELS, create_app

__all__ = ["DEFAULT_MAX_PIXELS", "create_app", "serve"]


def serve(
    model: str | None = None,
    *,
    weights: str | None = None,
    device: str = "cpu",
    host: str = "127.0.0.1",
    port: int = 8000,
    max_upload_mb: float = 20.0,
) -> None:
    """Load a model once and serve the page and API until interrupted.

    Args:
        model: as :func:`sacam.models.load_model` (default: EfficientNet-Lite0).
        weights: state dict for the model's architecture.
        device: torch device of the model.
        host: address to listen on; the default, 127.0.0.1, is reachable from this
            machine only. The app has no authentication: do not expose it publicly.
        port: TCP port (0 picks a free one).
        max_upload_mb: largest upload accepted, in MiB.
    """
    if not 0 <= port <= 65535:
        raise SacamError(f"--port must be between 0 and 65535, got {port}")
    loaded = load_model(model, weights=weights, device=device)
    app = create_app(loaded, max_upload_mb=max_upload_mb)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        family = infos[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        raise SacamError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    print(f"sacam serve: model {loaded.name} on {device}; open http://{shown}:{bound}/", flush=True)
    if host not in ("127.0.0.1", "localhost", "::1"):
        print("sacam serve: note: the page has no authentication", file=sys.stderr)
    config = uvicorn.Config(app, log_level="warning")
    uvicorn.Server(config).run(sockets=[sock])
