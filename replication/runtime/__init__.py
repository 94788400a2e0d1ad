"""The node runtime as steps: a pure machine around the Raft core, fed events by a shell.

``events`` holds what goes in and what comes out, ``machine`` the decisions. The
threaded shell is :class:`replication.node.Node`; see /docs/architecture.md."""
