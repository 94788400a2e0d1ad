"""The operator's desktop client (``grid ui``): Tk widgets over a thread-owned cluster session."""
