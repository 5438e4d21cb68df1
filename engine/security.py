"""Transport security: loopback by default, ZeroMQ CURVE everywhere else.

Every engine socket binds 127.0.0.1 (or an ``ipc://`` path in a private 0700
run directory) unless ``transport.bind_host`` says otherwise. Binding any other
address, or setting ``transport.curve = true``, turns on CURVE on *every*
socket: binding sockets are CURVE servers with the engine's server key, the
connecting sockets are CURVE clients with the client key, and each process that
binds runs a ZAP authenticator that admits only the client public keys found in
the keys directory (``*.key`` files). A peer without an admitted key pair, or
that does not know the server's public key, never completes the handshake and
receives nothing. ``sentistream keys --dir DIR`` makes the key pairs:

    DIR/server.key         the server public key     (give it to every client)
    DIR/server.key_secret  the server key pair       (stays with the engine)
    DIR/client.key         a client public key       (admitted: it is in DIR)
    DIR/client.key_secret  a client key pair         (for the engine's own stages and trusted agents)

To admit another agent, put its public ``.key`` file (zmq.auth format) in DIR.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SERVER_SECRET = "server.key_secret"
SERVER_PUBLIC = "server.key"
CLIENT_SECRET = "client.key_secret"
CLIENT_PUBLIC = "client.key"
KEY_FILES = (SERVER_PUBLIC, SERVER_SECRET, CLIENT_PUBLIC, CLIENT_SECRET)


def is_loopback_host(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and localhost; False for 0.0.0.0, *, interfaces, other hosts."""
    host = host.strip().strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_local_address(address: str) -> bool:
    """An endpoint that only this host can reach: ipc://, inproc://, or tcp:// on loopback."""
    scheme, sep, rest = address.partition("://")
    if not sep:
        return False
    if scheme in ("ipc", "inproc"):
        return True
    if scheme != "tcp":
        return False
    host = rest.rsplit(":", 1)[0]
    if ";" in host:  # tcp://source;destination: the destination is what is bound/connected
        host = host.split(";", 1)[1]
    return is_loopback_host(host)


@dataclass
class CurveKeys:
    server_public: bytes
    server_secret: bytes
    client_public: bytes
    client_secret: bytes
    keys_dir: str

    @classmethod
    def load(cls, keys_dir: str) -> CurveKeys:
        import zmq.auth

        d = Path(keys_dir)
        server_public, server_secret = zmq.auth.load_certificate(str(d / SERVER_SECRET))
        client_public, client_secret = zmq.auth.load_certificate(str(d / CLIENT_SECRET))
        if server_secret is None or client_secret is None:
            raise ValueError(f"{keys_dir}: the .key_secret files hold no secret key")
        return cls(server_public, server_secret, client_public, client_secret, str(d))


def missing_key_files(keys_dir: str) -> list[str]:
    d = Path(keys_dir)
    return [name for name in (SERVER_SECRET, CLIENT_SECRET) if not (d / name).is_file()]


class SocketSecurity:
    """Applies the transport's security settings to the sockets of one process."""

    def __init__(self, transport: Any, ctx: Any) -> None:
        self.enabled = transport.uses_curve()
        self.keys = CurveKeys.load(transport.curve_keys_dir) if self.enabled else None
        self.ctx = ctx
        self._auth = None

    def server(self, sock: Any) -> Any:
        """A socket that binds: CURVE server (started authenticator first)."""
        if self.keys is not None:
            import zmq

            self._start_authenticator()
            sock.setsockopt(zmq.CURVE_SERVER, 1)
            sock.setsockopt(zmq.CURVE_PUBLICKEY, self.keys.server_public)
            sock.setsockopt(zmq.CURVE_SECRETKEY, self.keys.server_secret)
        return sock

    def client(self, sock: Any) -> Any:
        """A socket that connects to an engine socket: CURVE client with the client key."""
        if self.keys is not None:
            import zmq

            sock.setsockopt(zmq.CURVE_SERVERKEY, self.keys.server_public)
            sock.setsockopt(zmq.CURVE_PUBLICKEY, self.keys.client_public)
            sock.setsockopt(zmq.CURVE_SECRETKEY, self.keys.client_secret)
        return sock

    def _start_authenticator(self) -> None:
        if self._auth is not None or self.keys is None:
            return
        from zmq.auth.thread import ThreadAuthenticator

        auth = ThreadAuthenticator(self.ctx, log=_quiet_auth_log())
        auth.start()
        # Admit only the public keys in the keys directory (server.key, client.key, added agents).
        auth.configure_curve(domain="*", location=self.keys.keys_dir)
        self._auth = auth

    def close(self) -> None:
        if self._auth is not None:
            self._auth.stop()
            self._auth = None


def _quiet_auth_log():
    import logging

    return logging.getLogger("sentistream.auth")


# ---- `sentistream keys` ---------------------------------------------------------------------------


def default_keys_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "sentistream" / "keys"


def make_keys(keys_dir: str | Path, force: bool = False) -> dict[str, str]:
    import zmq
    import zmq.auth

    if not zmq.has("curve"):
        raise RuntimeError("this libzmq was built without CURVE support; install a pyzmq wheel (it bundles libsodium)")
    d = Path(keys_dir).expanduser()
    existing = [name for name in KEY_FILES if (d / name).exists()]
    if existing and not force:
        raise FileExistsError(f"{d} already holds {', '.join(existing)}; pass --force to replace them")
    d.mkdir(parents=True, exist_ok=True)
    os.chmod(d, 0o700)
    for name in existing:
        (d / name).unlink()
    out: dict[str, str] = {}
    for who in ("server", "client"):
        public, secret = zmq.auth.create_certificates(str(d), who)
        os.chmod(secret, 0o600)
        out[f"{who}_public"], out[f"{who}_secret"] = str(public), str(secret)
    return out
