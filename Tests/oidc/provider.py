"""The tests' OpenID Connect provider: oidc-provider-mock (PyPI) on 127.0.0.1.

Usage: provider.py [PORT]   (0 or nothing: any free port)
Prints "listening PORT" once it accepts connections, and runs until its standard
input closes (the test ends, or kills it). Each start makes a new signing key, so a
restart on the same port is a key rotation as the hub sees it.
"""
import os
import sys
import threading

os.environ.setdefault("AUTHLIB_INSECURE_TRANSPORT", "1")  # plain http on loopback

import werkzeug.serving  # noqa: E402
import oidc_provider_mock  # noqa: E402

port = int(sys.argv[1]) if len(sys.argv) > 1 else 0
server = werkzeug.serving.make_server("127.0.0.1", port, oidc_provider_mock.app(require_nonce=True), threaded=True)
threading.Thread(target=server.serve_forever, daemon=True).start()
print(f"listening {server.server_port}", flush=True)
sys.stdin.read()
server.shutdown()
