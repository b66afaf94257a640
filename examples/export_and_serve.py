"""Export a training checkpoint to an inference model, then serve embeddings over HTTP.

    python examples/export_and_serve.py model.pdparams -o exported/          # export, then serve on :8000
    curl --data-binary @photo.jpg http://127.0.0.1:8000/embed               # -> {"embedding": [...512 floats]}
    python examples/export_and_serve.py model.pdparams -o exported/ --self-test   # one request to itself, then exit

Export: the checkpoint (a PaddleClas ``.pdparams``, path or URL; default ``SHITU_FEATURES_EXAMPLE_CHECKPOINT``,
else the official PP-ShiTuV2 checkpoint) is read with the restricted unpickler (no code in it can run),
loaded strictly into the PP-ShiTuV2 network without its classification head, re-parameterised and saved as a
Paddle 3 inference model (``inference.json`` + ``inference.pdiparams`` + ``inference.yml`` + ``config.json``).
The same as ``shitu-features export CHECKPOINT -o DIR``.

Serve: a minimal standard-library HTTP server. ``POST /embed`` with an encoded image (JPEG, PNG, ...) as the
body answers ``{"embedding": [...], "dim": 512}``; ``GET /health`` answers ``{"model": ..., "dim": ...}``.
A bad image answers 400 with the library's error message. One ``Extractor`` is shared by the request threads
(it serialises its predictor calls). For production put a real server (gunicorn, FastAPI, ...) in front of
the same ``Extractor``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np

from shitu_features import Extractor, ShituFeaturesError, build_rec_model, load_checkpoint, load_state_dict
from shitu_features.errors import DownloadError, OfflineError
from shitu_features.inference.export import export_inference_model
from shitu_features.inference.hub import resolve
from shitu_features.inference.hub import mirror_url
from shitu_features.inference.registry import DEFAULT_MODEL, OFFICIAL_MODELS

CHECKPOINT_ENV = "SHITU_FEATURES_EXAMPLE_CHECKPOINT"


def export(checkpoint: str, directory: Path) -> Path:
    """Export ``checkpoint`` (a local ``.pdparams`` or a URL) to an inference model in ``directory``."""
    path = Path(checkpoint)
    if not path.is_file():                                  # a URL: downloaded once into the cache
        path = resolve(checkpoint).path
    state = load_state_dict(path)                           # restricted unpickler: tensors only
    state = {k: v for k, v in state.items() if not k.startswith("head.")}   # the classifier is not the embedding
    model = build_rec_model(None)                            # backbone + BN neck, no head
    report = load_checkpoint(model, state)                   # strict: every key must fit
    print(report.summary())
    return export_inference_model(model, directory, overwrite=True, source={"checkpoint": str(checkpoint)})


def make_handler(extractor: Extractor) -> type[BaseHTTPRequestHandler]:
    """A request handler class bound to ``extractor``."""

    class Handler(BaseHTTPRequestHandler):
        def _reply(self, status: int, payload: dict) -> None:
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            if self.path == "/health":
                self._reply(200, {"model": extractor.name, "dim": extractor.embedding_size})
            else:
                self._reply(404, {"error": "GET /health or POST /embed"})

        def do_POST(self) -> None:  # noqa: N802
            if self.path != "/embed":
                self._reply(404, {"error": "POST an image to /embed"})
                return
            data = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            try:
                vector = extractor.embed(data)               # bytes -> float32 (512,), unit norm
            except ShituFeaturesError as exc:                # not an image, truncated, ...: the client's fault
                self._reply(400, {"error": str(exc)})
                return
            self._reply(200, {"embedding": vector.tolist(), "dim": int(vector.shape[0])})

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            sys.stderr.write(f"{self.address_string()} {format % args}\n")

    return Handler


def self_test(server: ThreadingHTTPServer, extractor: Extractor) -> None:
    """Send one generated image and one bad body to the running server; check the answers."""
    import cv2
    from _sample_images import draw_sample

    host, port = server.server_address[:2]
    rgb = draw_sample("red_circle", size=96)
    ok, png = cv2.imencode(".png", rgb[:, :, ::-1])
    assert ok
    url = f"http://{host}:{port}"
    with urllib.request.urlopen(urllib.request.Request(f"{url}/embed", data=png.tobytes()), timeout=60) as r:
        served = np.asarray(json.load(r)["embedding"], dtype=np.float32)
    local = extractor.embed(rgb)
    print(f"served embedding {served.shape}, max |served - local| = {np.abs(served - local).max():.2e}")
    if not np.allclose(served, local, atol=1e-6):
        raise SystemExit("self-test failed: the served embedding differs from the local one")
    try:
        urllib.request.urlopen(urllib.request.Request(f"{url}/embed", data=b"not an image"), timeout=60)
        raise SystemExit("self-test failed: a bad image was accepted")
    except urllib.error.HTTPError as exc:
        print(f"bad image -> HTTP {exc.code}: {json.load(exc)['error'][:60]}...")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Export a .pdparams checkpoint and serve embeddings over HTTP.")
    parser.add_argument("checkpoint", nargs="?", default=os.environ.get(CHECKPOINT_ENV),
                        help=f".pdparams path or URL (default: ${CHECKPOINT_ENV}, else the official checkpoint)")
    parser.add_argument("-o", "--output", type=Path, help="export folder (default: a temporary folder)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0 = any free port")
    parser.add_argument("--self-test", action="store_true", help="send test requests to the server, then exit")
    args = parser.parse_args(argv)
    # The official training checkpoint, through SHITU_FEATURES_ENDPOINT when a mirror is set.
    checkpoint = args.checkpoint or mirror_url(next(
        a.url for a in OFFICIAL_MODELS[DEFAULT_MODEL].artifacts if a.format == "pdparams"))

    with tempfile.TemporaryDirectory() as tmp:
        try:
            directory = export(checkpoint, args.output or Path(tmp) / "exported")
        except (OfflineError, DownloadError) as exc:
            sys.exit(f"error: {exc}\n\nNo network? Pass a local checkpoint file (or set {CHECKPOINT_ENV}).")
        print(f"exported to {directory}: {sorted(p.name for p in directory.iterdir())}")
        extractor = Extractor.from_pretrained(directory)     # what a deployment would load

        server = ThreadingHTTPServer((args.host, 0 if args.self_test else args.port), make_handler(extractor))
        if args.self_test:
            thread = threading.Thread(target=server.serve_forever, daemon=True)
            thread.start()
            try:
                self_test(server, extractor)
            finally:
                server.shutdown()
                server.server_close()
            print("self-test passed")
            return 0
        host, port = server.server_address[:2]
        print(f"serving {extractor.name} on http://{host}:{port} (POST /embed, GET /health); Ctrl-C to stop")
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
