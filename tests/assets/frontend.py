"""A thread-per-request HTTP service for the tracing tests.

GET /<anything> calls the backend (nginx) with urllib from the same
thread, then answers 200 with the backend's status in the body. Standard
library only; it knows nothing about tracing.

Usage: frontend.py PORT BACKEND_URL [CERT KEY]  (with CERT and KEY it
serves HTTPS; an https backend's self-signed certificate is accepted).
"""

import ssl
import sys
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BACKEND = sys.argv[2]
BACKEND_TLS = ssl._create_unverified_context()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        with urllib.request.urlopen(
            BACKEND + "/index.html", timeout=5, context=BACKEND_TLS
        ) as upstream:
            upstream.read()
            status = upstream.status
        body = f"backend said {status}\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
if len(sys.argv) > 4:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(sys.argv[3], sys.argv[4])
    server.socket = context.wrap_socket(server.socket, server_side=True)
server.serve_forever()
