"""Reading submissions: bulk files (CSV, JSON Lines) and gRPC messages into plain dicts."""
