"""The grid application: a 3x3 grid of node PCs whose master is the cluster's leader.

- ``model``: the replicated state (grid, nodes, presets, health) and its transactions;
- ``settings``: what a node can be told (power, content, volume, brightness);
- ``layout``: the TOML layout file, checked, and watched for edits;
- ``agent``: the non-persistent piece on every PC that holds the actual settings;
- ``controller``: runs on the leader only, heartbeats agents and pushes desired settings;
- ``node``: the plugin that hosts agent, controller and watcher in a cluster node;
- ``local`` / ``demo`` / ``cli``: the ``grid`` command.
"""
