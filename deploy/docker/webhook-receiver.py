"""A demo SOAR webhook receiver for the QSC cortex's alerts.

Every POST must carry a valid Standard Webhooks signature: the headers webhook-id,
webhook-timestamp (Unix seconds, within --tolerance of this clock) and webhook-signature
(space-separated "v1,<base64 HMAC-SHA256>" entries over "{id}.{timestamp}.{body}", keyed with the
base64 part of the whsec_ secret). A verified message is answered 204, printed as one JSON line
and appended to --record; a message id seen before is answered 204 again without being recorded
twice (the cortex retries under the same id). Anything else is refused (400, 401, 413).

For trying the cortex's webhooks on one machine (docker-compose.yml, profile "demo"); it keeps
what it accepted in a plain file, so it is not for production."""

import argparse
import base64
import hashlib
import hmac
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MAX_BODY = 1 << 20
SECRET_PREFIX = "whsec_"


class Refused(Exception):
    """A message that is not accepted, with the HTTP status to answer."""

    def __init__(self, status, reason):
        super().__init__(reason)
        self.status = status
        self.reason = reason


def load_secret(path):
    """The HMAC key of a whsec_<base64> secret file (24 to 64 bytes once decoded)."""
    try:
        with open(path, encoding="ascii") as f:
            text = f.read().strip()
    except OSError as e:
        raise SystemExit(f"webhook-demo: cannot read the secret file {path}: {e.strerror}")
    if not text.startswith(SECRET_PREFIX):
        raise SystemExit(f"webhook-demo: {path} does not hold a {SECRET_PREFIX} secret")
    try:
        key = base64.b64decode(text[len(SECRET_PREFIX):], validate=True)
    except ValueError:
        raise SystemExit(f"webhook-demo: the secret in {path} is not valid base64")
    if not 24 <= len(key) <= 64:
        raise SystemExit(f"webhook-demo: the secret in {path} decodes to {len(key)} bytes, not 24-64")
    return key


def verify(key, headers, body, tolerance, now):
    """The message id of a correctly signed, timely message; raises Refused otherwise."""
    msg_id = headers.get("webhook-id")
    stamp = headers.get("webhook-timestamp")
    signatures = headers.get("webhook-signature")
    if not msg_id or not stamp or not signatures:
        raise Refused(400, "webhook-id, webhook-timestamp or webhook-signature is missing")
    try:
        timestamp = int(stamp)
    except ValueError:
        raise Refused(400, f"webhook-timestamp {stamp!r} is not an integer")
    if abs(now - timestamp) > tolerance:
        raise Refused(401, f"webhook-timestamp {timestamp} is more than {tolerance} s from now")
    signed = msg_id.encode() + b"." + str(timestamp).encode() + b"." + body
    expected = hmac.new(key, signed, hashlib.sha256).digest()
    for entry in signatures.split():
        version, _, encoded = entry.partition(",")
        if version != "v1":
            continue
        try:
            candidate = base64.b64decode(encoded, validate=True)
        except ValueError:
            continue
        if hmac.compare_digest(candidate, expected):
            return msg_id
    raise Refused(401, "no v1 signature matches")


class Receiver(BaseHTTPRequestHandler):
    # Set by main(): the key, the timestamp tolerance, the record file, the ids seen.
    key = b""
    tolerance = 300
    record_path = None
    seen = set()
    lock = threading.Lock()

    def do_POST(self):
        try:
            body = self.read_body()
            msg_id = verify(self.key, self.headers, body, self.tolerance, int(time.time()))
            self.accept(msg_id, body)
        except Refused as refused:
            sys.stderr.write(f"webhook-demo: refused {self.path}: {refused.reason}\n")
            self.send_error(refused.status, refused.reason)
            return
        self.send_response(204)
        self.end_headers()

    def read_body(self):
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            raise Refused(400, "Content-Length is not a number")
        if length < 0 or length > MAX_BODY:
            raise Refused(413, "body too large")
        return self.rfile.read(length)

    def accept(self, msg_id, body):
        """Prints and records a verified message, once per message id."""
        try:
            payload = json.loads(body)
        except ValueError:
            raise Refused(400, "the body is not JSON")
        record = {
            "webhook_id": msg_id,
            "verified": True,
            "received": int(time.time()),
            "path": self.path,
            "body": payload,
        }
        line = json.dumps(record)
        with self.lock:
            if msg_id in self.seen:
                return
            self.seen.add(msg_id)
            if self.record_path:
                with open(self.record_path, "a", encoding="utf-8") as f:
                    f.write(line + "\n")
        print(line, flush=True)

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.end_headers()
        self.wfile.write(b"qsc webhook demo receiver: POST signed JSON here\n")

    def log_message(self, fmt, *args):
        sys.stderr.write("webhook-demo: " + (fmt % args) + "\n")


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--listen", default="127.0.0.1:9090", help="HOST:PORT to listen on")
    parser.add_argument(
        "--secret-file", required=True, help="file holding the shared whsec_<base64> secret"
    )
    parser.add_argument(
        "--record", help="file the verified messages are appended to (one JSON line each)"
    )
    parser.add_argument(
        "--tolerance",
        type=int,
        default=300,
        help="largest accepted difference between webhook-timestamp and this clock, in seconds",
    )
    args = parser.parse_args()
    host, _, port = args.listen.rpartition(":")
    if not port.isdigit():
        raise SystemExit(f"webhook-demo: --listen {args.listen!r} is not HOST:PORT")
    Receiver.key = load_secret(args.secret_file)
    Receiver.tolerance = args.tolerance
    Receiver.record_path = args.record
    server = ThreadingHTTPServer((host, int(port)), Receiver)
    print(f"webhook-demo: listening on {args.listen}", file=sys.stderr, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
