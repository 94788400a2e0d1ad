"""RPyC networking: cluster secret, authentication, the peer transport between nodes."""
from .client import ClusterClient, ClusterUnavailable, Compacted, Event, RemoteTransactionError, Subscription, connect
from .client import register_exception
from .auth import AuthenticationFailed, ConnectFailed, Identity, ServerAuthenticator, client_handshake
from .secret import SecretError, generate_secret_file, load_secret
from .transport import PeerServer, PeerTransport, TransportError, open_connection
from .wire import HandshakeError

__all__ = [
    "Compacted",
    "Event",
    "Subscription",
    "ClusterClient",
    "ClusterUnavailable",
    "RemoteTransactionError",
    "connect",
    "register_exception",
    "AuthenticationFailed",
    "ConnectFailed",
    "HandshakeError",
    "Identity",
    "PeerServer",
    "PeerTransport",
    "SecretError",
    "ServerAuthenticator",
    "TransportError",
    "client_handshake",
    "generate_secret_file",
    "load_secret",
    "open_connection",
]
