"""A reverse proxy on loopback that delays every HTTP request: a PACS not on this machine.

``with delayed_proxy("http://127.0.0.1:8042", 0.010) as url:`` forwards each request to the
server after 10 ms (a round trip across a hospital network and the server's answer to it;
loopback answers in microseconds), body and headers as they are, one thread per connection.
``segment_ab.py --dicomweb --network-delay-ms 10`` puts it between the job and Orthanc.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import threading
import time
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

#: Headers that belong to one connection, not forwarded (RFC 9110 7.6.1).
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade"}


def _handler(target: urllib.parse.SplitResult, delay: float) -> type[BaseHTTPRequestHandler]:
    class Forward(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _forward(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            time.sleep(delay)
            upstream = http.client.HTTPConnection(target.hostname, target.port, timeout=120)
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
            upstream.request(self.command, self.path, body=body, headers=headers)
            answer = upstream.getresponse()
            data = answer.read()
            upstream.close()
            self.send_response(answer.status, answer.reason)
            for key, value in answer.getheaders():
                if key.lower() not in HOP_BY_HOP | {"content-length"}:
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            # headers and body in one write: two would wait out the client's delayed ACK
            # (~40 ms a response, more than the delay this proxy is for)
            self._headers_buffer.append(b"\r\n" + data)
            self.flush_headers()

        def setup(self) -> None:
            super().setup()
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        do_GET = do_POST = do_PUT = do_DELETE = _forward  # noqa: N815  (http.server's names)

        def log_message(self, *args: object) -> None:  # quiet
            return

    return Forward


@contextlib.contextmanager
def delayed_proxy(url: str, delay: float) -> Iterator[str]:
    """``url``'s server behind a proxy that waits ``delay`` seconds per request; its URL."""
    target = urllib.parse.urlsplit(url)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(target, delay))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}{target.path}"
    finally:
        server.shutdown()
        server.server_close()
