#!/usr/bin/python3
"""glib-duplex.py — full duplex on ONE GTlsConnection per endpoint, through
GIO's TLS API (glib-networking's GnuTLS backend), as a GIO program does it.

One process: a GTlsServerConnection and a GTlsClientConnection over a real
TCP connection on 127.0.0.1.  After the handshake each endpoint runs two
threads on its one GTlsConnection: one writes its output stream, the other
reads its input stream, both blocking, at the same time.  Each direction
carries a seeded pseudo-random stream (a prime-length block repeated, cut
into writes of random sizes); every byte read is compared with what must
arrive at that offset.

Run by tests/peer/glib-networking.sh (which makes the certificates and sets
G_TLS_GNUTLS_PRIORITY); run it directly with --certs DIR.  Prints
"GLIB key=value ..." as its last line; exit 0 on success, 1 on a failure,
3 on a timeout.  Needs Debian's /usr/bin/python3 with python3-gi.
"""
import argparse
import os
import random
import socket
import sys
import threading
import time

import gi

gi.require_version("Gio", "2.0")
from gi.repository import Gio, GLib  # noqa: E402

PERIOD = 1048573          # a prime: record boundaries drift through the pattern
MAX_WRITE = 256 * 1024


def parse():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--certs", required=True, help="directory from tests/qemu/mkcerts.sh")
    p.add_argument("--mb", type=int, default=256, help="MiB per direction (default 256)")
    p.add_argument("--seed", type=int, default=None, help="data seed (default random, printed)")
    p.add_argument("--client-cert", action="store_true",
                   help="the server requires a client certificate and the client presents one")
    p.add_argument("--timeout", type=float, default=90.0, help="give up after this many seconds")
    return p.parse_args()


class Failure:
    def __init__(self):
        self.lock = threading.Lock()
        self.first = None
        self.when = None

    def set(self, what):
        with self.lock:
            if self.first is None:
                self.first = what
                self.when = time.monotonic()
                print(f"glib-duplex: FAIL {what}", file=sys.stderr, flush=True)


def gerr(e):
    if isinstance(e, GLib.Error):
        return f"{e.domain}:{e.code}: {e.message}"
    return f"{type(e).__name__}: {e}"


def pattern(seed, direction):
    block = random.Random(seed * 4 + direction).randbytes(PERIOD)
    return memoryview(block + block[:MAX_WRITE])


def writer(name, conn, pat, total, seed, fail, stats):
    out = conn.get_output_stream()
    rng = random.Random(seed)
    off = 0
    try:
        while off < total and fail.first is None:
            n = min(rng.randint(1, MAX_WRITE), total - off)
            p = off % PERIOD
            ok, written = out.write_all(bytes(pat[p:p + n]), None)
            if not ok or written != n:
                fail.set(f"{name}-write: wrote {written} of {n} at offset {off}")
                return
            off += n
    except Exception as e:  # GLib.Error: the TLS error is the result
        fail.set(f"{name}-write at offset {off}: {gerr(e)}")
    stats[name + "-written"] = off


def reader(name, conn, pat, total, fail, stats):
    inp = conn.get_input_stream()
    off = 0
    reads = 0
    try:
        while off < total and fail.first is None:
            data = inp.read_bytes(65536, None).get_data()
            if not data:
                fail.set(f"{name}-read: EOF at offset {off} of {total}")
                return
            n = len(data)
            if off + n > total:
                fail.set(f"{name}-read: {off + n - total} bytes more than were sent")
                return
            p = off % PERIOD
            if pat[p:p + n] != data:
                i = next(i for i in range(n) if pat[p + i] != data[i])
                fail.set(f"{name}-read: wrong byte at stream offset {off + i} "
                         f"(read of {n} at {off}): got {data[i]:#04x}, want {pat[p + i]:#04x}")
                return
            off += n
            reads += 1
    except Exception as e:
        fail.set(f"{name}-read at offset {off}: {gerr(e)}")
    stats[name + "-read"] = off
    stats[name + "-reads"] = reads


def main():
    a = parse()
    seed = a.seed if a.seed is not None else random.SystemRandom().randrange(1, 10**9)
    total = a.mb << 20
    print(f"glib-duplex: seed={seed} {a.mb} MiB per direction client_cert={int(a.client_cert)} "
          f"G_TLS_GNUTLS_PRIORITY={os.environ.get('G_TLS_GNUTLS_PRIORITY', '(unset)')}", flush=True)
    with open("/proc/self/maps") as f:
        maps = f.read()
    pre = [p for p in os.environ.get("LD_PRELOAD", "").replace(":", " ").split() if p]
    shim = "yes" if pre and all(p in maps for p in pre) else "no"

    fail = Failure()

    def watchdog():
        time.sleep(a.timeout)
        print(f"GLIB ok=0 seed={seed} shim={shim} error=TIMEOUT after {a.timeout:.0f}s "
              f"(first failure: {fail.first})", flush=True)
        os._exit(3)
    threading.Thread(target=watchdog, daemon=True).start()

    # A real TCP connection on loopback.
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(1)
    port = lsock.getsockname()[1]
    csock = socket.create_connection(("127.0.0.1", port))
    ssock, _ = lsock.accept()
    lsock.close()

    def gio(s):
        return Gio.Socket.new_from_fd(s.detach()).connection_factory_create_connection()
    sbase, cbase = gio(ssock), gio(csock)

    c = os.path.abspath(a.certs)
    db = Gio.TlsFileDatabase.new(os.path.join(c, "ca-cert.pem"))
    srv = Gio.TlsServerConnection.new(
        sbase, Gio.TlsCertificate.new_from_files(os.path.join(c, "server-cert.pem"),
                                                  os.path.join(c, "server-key.pem")))
    cli = Gio.TlsClientConnection.new(cbase, Gio.NetworkAddress.new("localhost", port))
    cli.set_database(db)
    if a.client_cert:
        srv.set_database(db)
        srv.set_property("authentication-mode", Gio.TlsAuthenticationMode.REQUIRED)
        cli.set_certificate(Gio.TlsCertificate.new_from_files(
            os.path.join(c, "client-cert.pem"), os.path.join(c, "client-key.pem")))
    rejected = []

    # A GTlsServerConnection asks the program about every client certificate
    # (the client only about invalid ones): accept exactly the valid ones.
    def refuse(who):
        def cb(conn, cert, errors):
            if int(errors) == 0:
                return True
            rejected.append(f"{who} rejected the peer certificate (errors {int(errors):#x})")
            return False
        return cb
    cli.connect("accept-certificate", refuse("client"))
    srv.connect("accept-certificate", refuse("server"))

    hs = {}

    def handshake(name, conn):
        try:
            conn.handshake(None)
            hs[name] = "ok"
        except Exception as e:
            hs[name] = gerr(e)
            fail.set(f"{name}-handshake: {gerr(e)}")
    t0 = time.monotonic()
    hths = [threading.Thread(target=handshake, args=(n, x), daemon=True)
            for n, x in (("server", srv), ("client", cli))]
    for t in hths:
        t.start()
    # One side failing can leave the other waiting for ever: 2 s grace.
    while any(t.is_alive() for t in hths):
        if fail.first is not None:
            for t in hths:
                t.join(2.0)
            break
        hths[0].join(0.1)
    if hs.get("client") != "ok" or hs.get("server") != "ok":
        print(f"GLIB ok=0 seed={seed} shim={shim} error=handshake: {fail.first} "
              f"{' '.join(rejected)}", flush=True)
        return 1
    proto = cli.get_protocol_version()
    suite = cli.get_ciphersuite_name() or "?"
    proto_name = {Gio.TlsProtocolVersion.TLS_1_3: "TLS1.3",
                  Gio.TlsProtocolVersion.TLS_1_2: "TLS1.2"}.get(proto, str(proto))
    peer_ok = cli.get_peer_certificate() is not None and int(cli.get_peer_certificate_errors()) == 0
    client_seen = srv.get_peer_certificate() is not None
    print(f"glib-duplex: handshake {time.monotonic() - t0:.3f}s {proto_name} {suite} "
          f"server_cert_valid={int(peer_ok)} server_saw_client_cert={int(client_seen)}", flush=True)
    if not peer_ok or client_seen != a.client_cert:
        print(f"GLIB ok=0 seed={seed} shim={shim} error=certificates: server_cert_valid={int(peer_ok)} "
              f"server_saw_client_cert={int(client_seen)}", flush=True)
        return 1

    pat_c2s, pat_s2c = pattern(seed, 0), pattern(seed, 1)
    stats = {}
    threads = [
        threading.Thread(target=writer, args=("client", cli, pat_c2s, total, seed * 4 + 2, fail, stats)),
        threading.Thread(target=reader, args=("server", srv, pat_c2s, total, fail, stats)),
        threading.Thread(target=writer, args=("server", srv, pat_s2c, total, seed * 4 + 3, fail, stats)),
        threading.Thread(target=reader, args=("client", cli, pat_s2c, total, fail, stats)),
    ]
    t1 = time.monotonic()
    for t in threads:
        t.start()
    # A failed thread leaves its peer blocked: give the others a moment, then judge.
    while any(t.is_alive() for t in threads):
        if fail.first is not None:
            for t in threads:
                t.join(2.0)
            break
        threads[0].join(0.2)
    secs = time.monotonic() - t1
    moved = stats.get("server-read", 0) + stats.get("client-read", 0)
    if fail.first is None:
        for name, conn in (("client", cli), ("server", srv)):
            try:
                conn.close(None)
            except Exception as e:
                fail.set(f"{name}-close: {gerr(e)}")
    ok = fail.first is None and stats.get("server-read") == total and stats.get("client-read") == total
    print(f"GLIB ok={int(ok)} seed={seed} shim={shim} protocol={proto_name} cipher={suite} "
          f"client_cert={int(a.client_cert)} bytes={moved} secs={secs:.3f} "
          f"mbps={moved / secs / 1e6:.1f} reads={stats.get('server-reads', 0) + stats.get('client-reads', 0)}"
          + ("" if ok else f" failed_after={fail.when - t1:.3f}s error={fail.first}"), flush=True)
    sys.stdout.flush()
    os._exit(0 if ok else 1)   # threads may still sit in a dead session


if __name__ == "__main__":
    try:
        rc = main()
    except Exception as e:  # never leave a thread hanging in a dead session
        print(f"GLIB ok=0 error=glib-duplex.py: {gerr(e)}", flush=True)
        rc = 1
    sys.stdout.flush()
    os._exit(rc or 0)
