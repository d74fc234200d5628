"""kubefaas instance shim for Python scripts.

Loads the script's entry file, reports readiness, then serves calls from the
controller until the connection closes. Frames, both directions:
4-byte big-endian header length, 4-byte big-endian body length, header JSON,
body bytes. The body is the raw payload, so any bytes travel unchanged.
"""
import importlib.util
import json
import os
import select
import socket
import struct
import sys
import threading
import traceback
from concurrent.futures import ThreadPoolExecutor


def connect():
    if "KUBEFAAS_FD" in os.environ:
        return socket.socket(fileno=int(os.environ["KUBEFAAS_FD"]))
    host, _, port = os.environ["KUBEFAAS_LISTEN"].rpartition(":")
    listener = socket.create_server((host or "0.0.0.0", int(port)))
    connection, _ = listener.accept()
    listener.close()
    return connection


# Bytes requested from the socket per read, so a typical call arrives in one read.
READ_SIZE = 65536
# Bodies up to this size are sent in the same system call as the header.
SINGLE_WRITE_BYTES = 65536


class Connection:
    """The instance's end of the connection to the server.

    Input is awaited with poll() rather than inside recv(). A thread
    blocked in recv() on a Unix socket is also woken, for nothing, each time
    the server reads a reply from that socket, but a poll for input is not.
    """

    def __init__(self, sock):
        self.sock = sock
        self.buffer = bytearray()
        self.poller = select.poll()
        self.poller.register(sock, select.POLLIN)
        self.write_lock = threading.Lock()

    def read_exact(self, size):
        while len(self.buffer) < size:
            self.poller.poll()
            chunk = self.sock.recv(max(READ_SIZE, size - len(self.buffer)))
            if not chunk:
                return None
            self.buffer += chunk
        data = bytes(memoryview(self.buffer)[:size])
        del self.buffer[:size]
        return data

    def read_frame(self):
        prefix = self.read_exact(8)
        if prefix is None:
            return None, None
        header_length, body_length = struct.unpack(">II", prefix)
        header = self.read_exact(header_length)
        body = self.read_exact(body_length) if body_length else b""
        if header is None or body is None:
            return None, None
        return json.loads(header), body

    def write_frame(self, header, body=b""):
        encoded = json.dumps(header).encode()
        start = struct.pack(">II", len(encoded), len(body)) + encoded
        with self.write_lock:
            if len(body) <= SINGLE_WRITE_BYTES:
                self.sock.sendall(start + body)
            else:
                self.sock.sendall(start)
                self.sock.sendall(body)


def load_handler():
    code_dir = os.environ["KUBEFAAS_CODE_DIR"]
    path = os.path.join(code_dir, os.environ["KUBEFAAS_ENTRY"])
    sys.path.insert(0, code_dir)
    spec = importlib.util.spec_from_file_location("handler", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["handler"] = module
    spec.loader.exec_module(module)
    handle = getattr(module, "handle", None)
    if not callable(handle):
        raise SystemExit(f"{os.environ['KUBEFAAS_ENTRY']} defines no function handle(data)")
    return handle


def decode_payload(header, body):
    if not header.get("has_payload"):
        return None
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        return body


def encode_payload(payload):
    if payload is None:
        return False, b""
    if isinstance(payload, (bytes, bytearray, memoryview)):
        return True, bytes(payload)
    if isinstance(payload, str):
        return True, payload.encode("utf-8", "surrogatepass")
    return True, json.dumps(payload).encode()


def serve_call(handle, header, body):
    data = {
        "payload": decode_payload(header, body),
        "variables": header.get("variables") or {},
        "meta": header.get("meta") or {},
        "flow": header.get("flow") or {},
    }
    if "http" in header:
        data["http"] = header["http"]
    try:
        result = handle(data)
        if result is None:
            result = data
        if not isinstance(result, dict):
            raise TypeError(f"handle must return a dict, not {type(result).__name__}")
        has_payload, payload = encode_payload(result.get("payload"))
        reply = {"id": header["id"], "ok": True, "has_payload": has_payload}
        for field in ("variables", "meta", "flow", "response"):
            if field in result:
                reply[field] = result[field]
        if "logs" in result:
            reply["logs"] = [str(line) for line in result["logs"] or []]
        json.dumps(reply)
        return reply, payload
    except Exception as error:
        traceback.print_exc()
        return {
            "id": header["id"],
            "ok": False,
            "error": {"type": type(error).__name__, "message": str(error), "traceback": traceback.format_exc()},
        }, b""


def serve_and_reply(connection, handle, header, body):
    reply, payload = serve_call(handle, header, body)
    connection.write_frame(reply, payload)


def receive_script(connection):
    """Wait for the script of a prewarmed instance and write its files.

    The controller sends one frame: `load` has the entry, the environment
    and the file list, and the body contains the files' bytes in that order.
    """
    header, body = connection.read_frame()
    if header is None:
        sys.exit(0)
    load = header["load"]
    code_dir = "/tmp/kubefaas-code"
    offset = 0
    for file in load["files"]:
        path = os.path.join(code_dir, file["path"])
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as output:
            output.write(body[offset:offset + file["size"]])
        offset += file["size"]
    os.environ.update(load["env"])
    os.environ["KUBEFAAS_CODE_DIR"] = code_dir
    os.environ["KUBEFAAS_ENTRY"] = load["entry"]
    for path in reversed(os.environ.get("PYTHONPATH", "").split(os.pathsep)):
        if path and path not in sys.path:
            sys.path.insert(0, path)
    os.chdir(code_dir)
    return header["id"]


def main():
    connection = Connection(connect())
    load_id = None
    if os.environ.get("KUBEFAAS_PREWARM") == "1":
        connection.write_frame({"ready": True, "prewarmed": True, "pid": os.getpid()})
        load_id = receive_script(connection)
    handle = load_handler()
    concurrency = int(os.environ.get("KUBEFAAS_CONCURRENCY", "1"))
    # With more than one call at a time, each call runs on a worker thread
    # and replies may go out of order; the controller matches them by id.
    workers = ThreadPoolExecutor(max_workers=concurrency) if concurrency > 1 else None
    if load_id is None:
        connection.write_frame({"ready": True, "pid": os.getpid()})
    else:
        connection.write_frame({"id": load_id, "ok": True})
    while True:
        header, body = connection.read_frame()
        if header is None:
            return
        if workers is None:
            serve_and_reply(connection, handle, header, body)
        else:
            workers.submit(serve_and_reply, connection, handle, header, body)


main()
