"""Peers for the kernel-filtering tests.

echo N K: in one process, a TCP echo server and its client exchanging N
line messages over one loopback connection, then K HTTP/1.1 exchanges
between a bare-socket server that reads its first request bytes one at a
time and a client that writes them one at a time. Prints the two ports.

client URL N: prints "ready", waits for a line on stdin, then makes N
HTTP GETs to URL (a new connection each) and prints "done".
"""

import socket
import sys
import threading
import urllib.request


def listener():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    return s


def echo_server(s, n):
    conn, _ = s.accept()
    with conn:
        seen = 0
        while seen < n:
            data = conn.recv(4096)
            if not data:
                break
            conn.sendall(data)
            seen += data.count(b"\n")


def echo_client(port, n):
    with socket.create_connection(("127.0.0.1", port)) as c:
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(n):
            line = b"PING %d\n" % i
            c.sendall(line)
            got = b""
            while len(got) < len(line):
                part = c.recv(4096)
                if not part:
                    raise SystemExit("echo server closed early")
                got += part


RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"


def http_server(s, k):
    for _ in range(k):
        conn, _ = s.accept()
        with conn:
            # The first reads of the connection are one byte each.
            head = conn.recv(1) + conn.recv(1) + conn.recv(1)
            while b"\r\n\r\n" not in head:
                part = conn.recv(4096)
                if not part:
                    break
                head += part
            conn.sendall(RESPONSE)


def http_client(port, i):
    with socket.create_connection(("127.0.0.1", port)) as c:
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # The first writes of the connection are one byte each.
        for piece in (b"G", b"E", b"T", b" /tiny/%d HTTP/1.1\r\nHost: x\r\n\r\n" % i):
            c.sendall(piece)
        got = b""
        while True:
            part = c.recv(4096)
            if not part:
                break
            got += part
        if not got.startswith(b"HTTP/1.1 200"):
            raise SystemExit("bad response %r" % got)


def echo(n, k):
    e = listener()
    h = listener()
    print(e.getsockname()[1], h.getsockname()[1], flush=True)
    server = threading.Thread(target=echo_server, args=(e, n))
    server.start()
    echo_client(e.getsockname()[1], n)
    server.join()
    server = threading.Thread(target=http_server, args=(h, k))
    server.start()
    for i in range(k):
        http_client(h.getsockname()[1], i)
    server.join()


def client(url, n):
    print("ready", flush=True)
    sys.stdin.readline()
    for _ in range(n):
        with urllib.request.urlopen(url, timeout=10) as r:
            r.read()
    print("done", flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "echo":
        echo(int(sys.argv[2]), int(sys.argv[3]))
    else:
        client(sys.argv[2], int(sys.argv[3]))
