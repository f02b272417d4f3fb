"""A demo SOAR webhook receiver: logs every POSTed body (one JSON line per request) and answers
204. For trying the cortex's webhooks on one machine; it does no authentication and keeps
nothing, so it is not for production."""

import argparse
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MAX_BODY = 1 << 20


class Receiver(BaseHTTPRequestHandler):
    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length < 0 or length > MAX_BODY:
            self.send_error(413, "body too large")
            return
        body = self.rfile.read(length)
        try:
            payload = json.loads(body)
        except ValueError:
            payload = {"unparsed": body.decode("utf-8", "replace")}
        record = {"path": self.path, "headers": dict(self.headers), "body": payload}
        print(json.dumps(record), flush=True)
        self.send_response(204)
        self.end_headers()

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.end_headers()
        self.wfile.write(b"qsc webhook demo receiver: POST JSON here\n")

    def log_message(self, fmt, *args):
        sys.stderr.write("webhook-demo: " + (fmt % args) + "\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--listen", default="127.0.0.1:9090", help="HOST:PORT to listen on")
    args = parser.parse_args()
    host, _, port = args.listen.rpartition(":")
    server = ThreadingHTTPServer((host, int(port)), Receiver)
    print(f"webhook-demo: listening on {args.listen}", file=sys.stderr, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
