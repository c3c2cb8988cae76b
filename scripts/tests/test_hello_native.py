"""hello-native speaks HTTP/1.1 through http_parser: keep-alive, pipelining, Connection: close,
and EADDRINUSE when a second process binds the same port. Loopback only; every process is
stopped by pid."""
import json
import os
import signal
import socket
import subprocess
import time

import pytest

SRC = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.environ.get("UVC_BUILD_DIR", os.path.join(SRC, "build"))
BIN = os.path.join(BUILD, "bin", "hello-native")
REQ = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\n"


@pytest.fixture
def server(tmp_path):
    if not os.access(BIN, os.X_OK):
        pytest.skip(f"{BIN} not built")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, UVC_LAB_STATS_DIR=str(tmp_path))
    p = subprocess.Popen([BIN, "--port", str(port)], env=env, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 5
    while not (tmp_path / f"{p.pid}.ready").exists():
        assert time.monotonic() < deadline and p.poll() is None, "hello-native did not start"
        time.sleep(0.01)
    yield port, p, tmp_path
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=5)


def read_responses(c, n, timeout=3):
    c.settimeout(timeout)
    data = b""
    while data.count(b"hello world\n") < n:
        chunk = c.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def test_keepalive_and_pipelining(server):
    port, p, tmp = server
    with socket.create_connection(("127.0.0.1", port)) as c:
        c.sendall(REQ)
        assert read_responses(c, 1).startswith(OK)
        c.sendall(REQ * 5)  # five pipelined requests in one segment
        data = read_responses(c, 5)
        assert data.count(OK) == 5 and data.count(b"hello world\n") == 5
        # split mid-request: the parser keeps its state across reads
        c.sendall(REQ[:10])
        time.sleep(0.05)
        c.sendall(REQ[10:])
        assert read_responses(c, 1).count(OK) == 1
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=5) == 0
    stats = json.loads((tmp / f"{p.pid}.json").read_text())
    assert stats["connections"] == 1 and stats["requests"] == 7


def test_connection_close_is_honoured(server):
    port, _, _ = server
    with socket.create_connection(("127.0.0.1", port)) as c:
        c.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" + REQ)
        data = read_responses(c, 2)
        assert data.count(OK) == 1 and b"Connection: close" in data  # nothing after the close
        assert c.recv(10) == b""  # and the server closed


def test_garbage_closes_the_connection(server):
    port, _, _ = server
    with socket.create_connection(("127.0.0.1", port)) as c:
        c.sendall(b"\x00\x01 NOT HTTP\r\n\r\n")
        c.settimeout(3)
        assert c.recv(100) == b""


def test_second_bind_gets_eaddrinuse(server):
    port, _, _ = server
    r = subprocess.run([BIN, "--port", str(port)], capture_output=True, text=True, timeout=10)
    assert r.returncode == 3 and "EADDRINUSE" in r.stderr


def test_connection_close_ends_with_a_fin_while_the_primary_still_holds_the_socket(tmp_path):
    """Under `--policy rr` the primary keeps its copy of a handed-off connection until the
    worker's answer reaches it. hello-native's `Connection: close` answer must still end with the
    worker's FIN (shutdown before close), not when the primary's copy closes: a scripted primary
    hands one connection over and never closes its copy."""
    if not os.access(BIN, os.X_OK):
        pytest.skip(f"{BIN} not built")
    primary, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    listener = socket.create_server(("127.0.0.1", 0))
    env = dict(os.environ, NODE_UNIQUE_ID="1", NODE_CHANNEL_FD=str(child.fileno()),
               UVC_LAB_STATS_DIR=str(tmp_path))
    env.pop("NODE_CHANNEL_SERIALIZATION_MODE", None)
    p = subprocess.Popen([BIN, "--port", "0"], env=env, pass_fds=(child.fileno(),))
    child.close()
    primary.settimeout(10)
    lines = primary.makefile("rb")
    try:
        key = "127.0.0.1:0:4:undefined:0"
        while True:  # online, then queryServer: answer it as the primary does
            msg = json.loads(lines.readline())
            if msg.get("act") == "queryServer":
                break
        sockname = {"address": "127.0.0.1", "family": "IPv4", "port": listener.getsockname()[1]}
        primary.sendall(json.dumps({"ack": msg["seq"], "cmd": "NODE_CLUSTER", "data": None, "errno": None,
                                    "key": key, "seq": 0, "sockname": sockname}).encode() + b"\n")
        while json.loads(lines.readline()).get("act") != "listening":
            pass
        with socket.create_connection(listener.getsockname()) as client:
            conn, _ = listener.accept()  # our copy: kept open until the end of the test
            frame = {"cmd": "NODE_HANDLE", "type": "net.Native",
                     "msg": {"act": "newconn", "cmd": "NODE_CLUSTER", "key": key, "seq": 1}}
            socket.send_fds(primary, [json.dumps(frame).encode() + b"\n"], [conn.fileno()])
            answers = [json.loads(lines.readline()), json.loads(lines.readline())]
            assert answers[0] == {"cmd": "NODE_HANDLE_ACK"}
            assert answers[1]["ack"] == 1 and answers[1]["accepted"] is True
            client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            client.settimeout(10)
            data = b""
            while chunk := client.recv(65536):  # a socket.timeout here: no FIN came
                data += chunk
            assert data.startswith(OK) and data.endswith(b"hello world\n")
            conn.close()
    finally:
        lines.close()
        primary.close()  # the channel's end: a worker exits when its primary is gone
        listener.close()
        try:
            p.wait(timeout=10)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
