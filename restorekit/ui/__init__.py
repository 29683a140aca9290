"""``restorekit ui``: a Gradio web app for every method (``pip install 'restorekit[ui]'``).

Gradio is imported only when the app is built, so ``import restorekit.ui`` works without it.
"""


def build_app(device=None):
    """The Gradio Blocks of the web UI; see :mod:`restorekit.ui.app`."""
    from .app import build_app as _build

    return _build(device=device)


def launch(host: str = "127.0.0.1", port: int = 7860, device=None, block: bool = True, **kwargs):
    """Serve the web UI on ``host:port``; see :func:`restorekit.ui.app.launch`."""
    from .app import launch as _launch

    return _launch(host=host, port=port, device=device, block=block, **kwargs)


__all__ = ["build_app", "launch"]
