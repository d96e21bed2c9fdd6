"""The lab's BMCs: one Redfish service per lab host (HTTPS, basic auth), in the lab's BMC
namespace on the power network P, each on its own port. Power state is the host's real state
(on while any process runs in its namespace); ComputerSystem.Reset ForceOff cuts the host's
power the way the lab's `fault kill` does (every process killed, links down), On boots it
(`heal boot`). Faults per host, read from <dir>/host-N.mode at every request: `normal`,
`lying` (says Off, does nothing), `slow` (answers after 5 s). Written by halo-lab (bmc.rs);
Python's standard library only, as Debian's fence agents are Python too."""

import base64
import json
import os
import ssl
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DIR, HALO, LAB, NETNS_PREFIX, ADDRESS = sys.argv[1:6]
PORTS = [int(p) for p in sys.argv[6].split(",")]
PASSWORD = open(os.path.join(DIR, "password")).read().strip()
USER = "admin"


def mode(host):
    try:
        return open(os.path.join(DIR, "host-%d.mode" % host)).read().strip()
    except OSError:
        return "normal"


def powered(host):
    out = subprocess.run(["ip", "netns", "pids", "%s%d" % (NETNS_PREFIX, host)],
                         capture_output=True, text=True)
    return bool(out.stdout.strip())


def log(host, text):
    with open(os.path.join(DIR, "bmc.log"), "a") as f:
        f.write("%.3f host-%d %s\n" % (time.time(), host, text))


def handler_for(host):
    system = "/redfish/v1/Systems/host-%d" % host

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def authorized(self):
            expected = "Basic " + base64.b64encode(("%s:%s" % (USER, PASSWORD)).encode()).decode()
            if self.headers.get("Authorization") == expected:
                return True
            self.reply(401, {"error": "unauthorized"})
            return False

        def reply(self, code, body=None):
            data = json.dumps(body).encode() if body is not None else b""
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def prelude(self):
            if mode(host) == "slow":
                time.sleep(5)
            return self.authorized()

        def do_GET(self):
            if not self.prelude():
                return
            path = self.path.rstrip("/")
            if path == "/redfish/v1":
                self.reply(200, {"Systems": {"@odata.id": "/redfish/v1/Systems"}})
            elif path == "/redfish/v1/Systems":
                self.reply(200, {"Members": [{"@odata.id": system}]})
            elif path == system:
                state = "Off" if mode(host) == "lying" or not powered(host) else "On"
                self.reply(200, {
                    "Id": "host-%d" % host,
                    "PowerState": state,
                    "Actions": {"#ComputerSystem.Reset": {"target": system + "/Actions/ComputerSystem.Reset"}},
                })
            else:
                self.reply(404, {"error": "no such resource"})

        def do_POST(self):
            if not self.prelude():
                return
            length = int(self.headers.get("Content-Length") or 0)
            try:
                body = json.loads(self.rfile.read(length) or b"{}")
            except ValueError:
                self.reply(400, {"error": "not JSON"})
                return
            if self.path.rstrip("/") != system + "/Actions/ComputerSystem.Reset":
                self.reply(404, {"error": "no such action"})
                return
            reset = body.get("ResetType")
            log(host, "reset %s (%s)" % (reset, mode(host)))
            if mode(host) == "lying":
                self.reply(204)
                return
            lab = ["--name", LAB]
            if reset in ("ForceOff", "ForceRestart", "PowerCycle"):
                subprocess.run([HALO, "lab"] + lab + ["fault", "kill", str(host)], capture_output=True)
            if reset in ("On", "ForceOn", "ForceRestart", "PowerCycle") and not powered(host):
                subprocess.run([HALO, "lab"] + lab + ["heal", "boot", str(host)], capture_output=True)
            if reset not in ("ForceOff", "On", "ForceOn", "ForceRestart", "PowerCycle"):
                self.reply(400, {"error": "ResetType %r not supported" % reset})
                return
            self.reply(204)

    return Handler


def serve(host, port):
    server = ThreadingHTTPServer((ADDRESS, port), handler_for(host))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(os.path.join(DIR, "cert.pem"), os.path.join(DIR, "key.pem"))
    server.socket = context.wrap_socket(server.socket, server_side=True)
    server.serve_forever()


threads = [threading.Thread(target=serve, args=(i + 1, port), daemon=True) for i, port in enumerate(PORTS)]
for t in threads:
    t.start()
open(os.path.join(DIR, "ready"), "w").write("ready\n")
for t in threads:
    t.join()
