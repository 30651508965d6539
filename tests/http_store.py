"""A real HTTP server on 127.0.0.1 that serves files with Range support and injects faults (the `store` fixture).

Faults, one per request: "500", "drop" (half the body, then hang up), "short" (100 bytes short), "stall" (half, then
silence), "range_from_zero" (a 206 that starts at byte 0), "html" (a captive portal's sign-in page), "endless" (a body
without a length that never ends).
"""

import http.server
import re
import threading
import time

# What a captive portal or a misconfigured mirror answers instead of the file asked for.
PORTAL_PAGE = b"<!DOCTYPE html>\n<html><head><title>Sign in</title></head><body>Accept the terms.</body></html>"


class FakeStore(http.server.ThreadingHTTPServer):
    """Serves `files[url_path]` with Range support; `faults[url_path]` lists one fault per request, in order."""

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files, self.faults, self.requests = {}, {}, []  # requests: (path, Range header or None)
        self.ignore_range = False
        self.lock = threading.Lock()

    @property
    def base_url(self):
        return f"http://127.0.0.1:{self.server_address[1]}/models"

    def serve_model(self, name, files):
        for file_name, data in files.items():
            self.files[f"/models/{name}/{file_name}"] = data

    def requests_for(self, name, file_name):
        return [rng for path, rng in self.requests if path == f"/models/{name}/{file_name}"]

    def handle_error(self, request, client_address):
        pass  # a client that hung up on purpose is not news


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in two writes; don't wait 40 ms for a delayed ACK

    def log_message(self, *args):
        pass

    def do_GET(self):
        store = self.server
        with store.lock:
            store.requests.append((self.path, self.headers.get("Range")))
            pending = store.faults.get(self.path)
            fault = pending.pop(0) if pending else None
        if fault == "500":
            return self._reply(500, b"oops")
        if fault == "html":  # a sign-in page whatever was asked for, as a captive portal serves it
            return self._reply(200, PORTAL_PAGE, {"Content-Type": "text/html; charset=utf-8"})
        if fault == "endless":  # no length, and a body that goes on until the client hangs up (or 60 s pass)
            return self._stream_forever()
        data = store.files.get(self.path)
        if data is None:
            return self._reply(404, b"not found")
        start, status, headers = 0, 200, {}
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
        if match and not store.ignore_range:
            start = 0 if fault == "range_from_zero" else int(match.group(1))
            if start >= len(data):
                return self._reply(416, b"", {"Content-Range": f"bytes */{len(data)}"})
            status, headers = 206, {"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"}
        body = data[start:]
        if fault == "drop":  # announce everything, send half, hang up
            return self._reply(status, body, headers, send=len(body) // 2)
        if fault == "short":  # always 100 bytes short of what was announced
            return self._reply(status, body, headers, send=max(len(body) - 100, 0))
        if fault == "stall":  # half, then silence longer than the client's timeout
            self._reply(status, body[: len(body) // 2], headers, length=len(body))
            threading.Event().wait(0.5)
            return self.wfile.write(body[len(body) // 2 :])
        self._reply(status, body, headers)

    def _stream_forever(self):
        self.send_response(200)
        self.send_header("Connection", "close")  # no Content-Length: the body ends when the connection does
        self.end_headers()
        self.close_connection = True
        deadline = time.monotonic() + 60
        try:
            while time.monotonic() < deadline:
                self.wfile.write(bytes(64 * 1024))
        except OSError:
            pass

    def _reply(self, status, body, headers=(), *, send=None, length=None):
        self.send_response(status)
        for key, value in dict(headers).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        self.wfile.write(body[:send])
        self.wfile.flush()
        if send is not None:
            self.close_connection = True
