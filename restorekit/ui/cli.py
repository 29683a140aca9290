"""``restorekit ui``: the sub-command that serves the web app (wired into :mod:`restorekit.cli`)."""

from __future__ import annotations

import sys

from ..errors import RestoreKitError


def add_ui_parser(sub) -> None:
    p = sub.add_parser("ui", help="start the web UI (Gradio; pip install 'restorekit[ui]')",
                       description="Serve a Gradio web app: upload an image, pick a method / task / model, restore "
                                   "it and compare it with the input; a second tab compares methods. Nothing is "
                                   "shared publicly: the app listens on --host only.")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.set_defaults(func=cmd_ui)


def cmd_ui(args) -> int:
    if not 1 <= args.port <= 65535:
        raise RestoreKitError(f"--port must be in [1, 65535], got {args.port}")
    if args.device is not None:
        from ..api import resolve_device

        resolve_device(args.device)
    from .app import launch

    print(f"starting the restorekit web UI on http://{args.host}:{args.port} (Ctrl+C stops it)", file=sys.stderr)
    try:
        launch(host=args.host, port=args.port, device=args.device, block=True)
    except OSError as e:  # the port is taken, the address is not this machine's, ...
        raise RestoreKitError(f"cannot serve on {args.host}:{args.port}: {e}") from None
    return 0
