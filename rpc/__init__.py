"""Networking: cluster secret, authentication, RPyC for clients, the peer transport between nodes."""
from .client import ClusterClient, ClusterUnavailable, RemoteTransactionError, connect
from .subscription import CommandUnanswered, Compacted, Event, Subscription
from .client import register_exception
from .auth import AuthenticationFailed, ConnectFailed, Identity, ServerAuthenticator, client_handshake
from .secret import SecretError, generate_secret_file, load_secret
from .peer_sender import PeerTransport
from .peer_server import PeerServer
from .transport import PeerChannel, TransportError, open_connection, open_peer_channel
from .wire import HandshakeError

__all__ = [
    "Compacted",
    "Event",
    "Subscription",
    "ClusterClient",
    "ClusterUnavailable",
    "CommandUnanswered",
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
    "open_peer_channel",
    "PeerChannel",
]
