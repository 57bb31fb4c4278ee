"""Records every network connect, send and name lookup of this Python process (and its Python children).

Put this folder on PYTHONPATH and set VLASSIST_AUDIT_LOG to a file: one JSON line per event, with the target
host (None for unix sockets). Tests read it to show that nothing left the machine.
"""

import json
import os
import socket
import sys

_LOG = os.environ.get("VLASSIST_AUDIT_LOG")


def _host(address):
    if isinstance(address, tuple) and address:
        return str(address[0])
    return None  # a unix socket path (str/bytes)


def _hook(event, args):
    if event not in ("socket.connect", "socket.sendto", "socket.getaddrinfo", "socket.gethostbyname",
                     "socket.gethostbyaddr"):
        return
    try:
        if event in ("socket.connect", "socket.sendto"):
            sock, address = args[0], args[-1]
            if sock.family == socket.AF_UNIX:
                return
            host = _host(address)
        else:
            host = str(args[0]) if args and args[0] is not None else None
        with open(_LOG, "a") as out:
            out.write(json.dumps({"event": event, "host": host, "pid": os.getpid()}) + "\n")
    except Exception:  # an audit hook must never break the program it watches
        pass


if _LOG:
    with open(_LOG, "a") as _out:  # proof that the hook was active in this process
        _out.write(json.dumps({"event": "audit.start", "host": None, "pid": os.getpid(),
                               "argv": sys.argv[:3]}) + "\n")
    sys.addaudithook(_hook)
