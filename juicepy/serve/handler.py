"""The HTTP front: routes, body limits, bounded connections and a clean stop.

Built on the standard library's ThreadingHTTPServer (one thread per connection), with the
number of connections capped so a flood of clients cannot grow the process without bound.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from ..errors import CheckpointError, DefinitionError, JuicepyError, WeightsError
from .codec import BadRequest, decode, encode, error_body
from .model import SwapRefused

log = logging.getLogger("juicepy.serve")

ROUTES = {"/predict": "POST", "/swap": "POST", "/health": "GET"}


class PredictionHandler(BaseHTTPRequestHandler):
    """One connection; requests on it are answered in turn (HTTP/1.1 keep-alive)."""

    protocol_version = "HTTP/1.1"
    server_version = "juicepy-serve"
    timeout = 30  # seconds a connection may sit idle or stall mid-request, then it is closed
    # headers and body go out in separate writes: without TCP_NODELAY the body waits for the
    # client's delayed ACK (about 40 ms a request)
    disable_nagle_algorithm = True

    def __getattr__(self, name):
        # BaseHTTPRequestHandler answers a method it has no do_<METHOD> for with 501; any
        # method other than a route's own is a client error here (405, naming the allowed one)
        if name.startswith("do_"):
            return self._dispatch
        raise AttributeError(name)

    def do_GET(self):
        self._dispatch()

    def do_POST(self):
        self._dispatch()

    def log_message(self, format, *args):
        log.debug("%s %s", self.address_string(), format % args)

    # ------------------------------------------------------------------ routing
    def _dispatch(self):
        app = self.server.app
        with app.tracker:
            try:
                if app.stopping:
                    raise BadRequest(503, "the server is shutting down")
                route = self.path.split("?", 1)[0]
                allowed = ROUTES.get(route)
                if allowed is None:
                    raise BadRequest(404, f"no route {route!r}; routes: "
                                          + ", ".join(f"{m} {r}" for r, m in ROUTES.items()))
                if self.command != allowed and not (self.command == "HEAD" and allowed == "GET"):
                    raise BadRequest(405, f"{route} takes {allowed}, not {self.command}", {"Allow": allowed})
                if route == "/health":
                    self._send(200, json.dumps(app.health()).encode(), "application/json")
                elif route == "/predict":
                    self._predict(app)
                else:
                    self._swap(app)
            except BadRequest as err:
                self._send_error(err.status, str(err), err.headers)
            except ConnectionError:  # the client hung up: nobody to answer
                self.close_connection = True
                log.debug("%s %s: the client closed the connection", self.command, self.path)
            except Exception as err:  # a bug or a backend failure: answer, log, keep serving
                log.exception("%s %s failed", self.command, self.path)
                self._send_error(500, f"internal error: {type(err).__name__}: {err}")

    def _predict(self, app):
        model = app.model
        network = model.network
        with app.arriving() as arrival:  # the micro-batcher may wait for this request
            decoded = decode(self._body(app.max_body_bytes), self.headers.get("Content-Type"),
                             len(network.inputs), len(network.outputs), network.dtype)
            try:
                inputs = model.check_inputs(decoded.inputs)
            except JuicepyError as err:  # shape, dtype, NaN with the guard on
                raise BadRequest(400, str(err)) from None
            rows = {int(x.shape[0]) for x in inputs}
            if len(rows) > 1:
                raise BadRequest(400, f"inputs have different row counts: {sorted(rows)}")
            outputs = arrival.submit(inputs)
        body, content_type = encode(outputs, decoded.form)
        self._send(200, body, content_type)

    def _swap(self, app):
        try:
            doc = json.loads(self._body(app.max_body_bytes))
        except (ValueError, UnicodeDecodeError, RecursionError) as err:
            raise BadRequest(400, f"malformed JSON body ({err}); send {{\"path\": \"ck.safetensors\"}}") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("path"), str):
            raise BadRequest(400, "send {\"path\": \"ck.safetensors\"}: the checkpoint to serve")
        try:
            app.model.swap_from(doc["path"])
        except SwapRefused as err:
            raise BadRequest(409, str(err)) from None
        except (CheckpointError, DefinitionError, WeightsError) as err:
            raise BadRequest(400, f"cannot load {doc['path']!r}: {err}") from None
        except OSError as err:
            raise BadRequest(400, f"cannot read {doc['path']!r}: {err}") from None
        self._send(200, json.dumps(app.health()).encode(), "application/json")

    # ----------------------------------------------------------------- plumbing
    def _body(self, limit: int) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            raise BadRequest(411, "chunked bodies are not accepted; send a Content-Length")
        length = self.headers.get("Content-Length")
        if length is None:
            raise BadRequest(411, "a POST needs a Content-Length header")
        try:
            length = int(length)
            if length < 0:
                raise ValueError
        except ValueError:
            raise BadRequest(400, f"Content-Length {self.headers.get('Content-Length')!r} is not a byte count") from None
        if length > limit:
            raise BadRequest(413, f"body of {length} bytes is over the limit of {limit} (--max-body-bytes)")
        try:
            body = self.rfile.read(length)
        except TimeoutError:
            raise BadRequest(408, f"the body did not arrive within {self.timeout} s") from None
        self._body_read = True
        if len(body) != length:
            raise BadRequest(400, f"body ended after {len(body)} of {length} bytes")
        return body

    def _send(self, status: int, body: bytes, content_type: str, headers: dict | None = None) -> None:
        if not self._body_read and (self.command not in ("GET", "HEAD") or self._declares_body()):
            # a body left unread (over the limit, refused early, sent with a GET) would be read as
            # the next request on this connection
            self.close_connection = True
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":  # its answer is the headers a GET would get
            self.wfile.write(body)

    def _declares_body(self) -> bool:
        return "Transfer-Encoding" in self.headers or self.headers.get("Content-Length", "0").strip() != "0"

    def _send_error(self, status: int, message: str, headers: dict | None = None) -> None:
        if status == 503:
            self.close_connection = True
        self._send(status, error_body(status, message), "application/json", headers)

    def handle_one_request(self):
        self._body_read = False
        super().handle_one_request()


class InFlight:
    """Counts requests being answered, so a stop can wait for them."""

    def __init__(self):
        self._count = 0
        self._idle = threading.Condition()

    def __enter__(self):
        with self._idle:
            self._count += 1

    def __exit__(self, *exc):
        with self._idle:
            self._count -= 1
            if self._count == 0:
                self._idle.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        with self._idle:
            return self._idle.wait_for(lambda: self._count == 0, timeout)


_BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nConnection: close\r\n"
         b"Content-Length: %d\r\n\r\n%s")


class BoundedHTTPServer(ThreadingHTTPServer):
    """ThreadingHTTPServer with at most ``max_connections`` open connections (threads);
    one more is answered 503 and closed. Open connections are tracked so a stop can close
    idle keep-alive ones."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address, app, max_connections: int):
        self.app = app
        self._slots = threading.BoundedSemaphore(max_connections)
        self._open: set = set()
        self._open_lock = threading.Condition()
        super().__init__(address, PredictionHandler)

    def process_request(self, request, client_address):
        if not self._slots.acquire(blocking=False):
            body = error_body(503, "too many open connections; retry later")
            try:
                request.sendall(_BUSY % (len(body), body))
            except OSError:
                pass
            self.shutdown_request(request)
            return
        with self._open_lock:
            self._open.add(request)
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._forget(request)
            raise

    def handle_error(self, request, client_address):
        log.exception("connection from %s failed", client_address[0])

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._forget(request)

    def _forget(self, request):
        with self._open_lock:
            if request in self._open:
                self._open.discard(request)
                self._slots.release()
                self._open_lock.notify_all()

    def close_connections(self, timeout: float) -> bool:
        """Shut every open connection down and wait up to ``timeout`` for their threads to
        finish; True when all did."""
        with self._open_lock:
            sockets = list(self._open)
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        with self._open_lock:
            return self._open_lock.wait_for(lambda: not self._open, timeout)

    @property
    def open_connections(self) -> int:
        with self._open_lock:
            return len(self._open)
