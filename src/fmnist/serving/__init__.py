"""Serving: the HTTP server and its page, dynamic batching, the limits of what a request may cost, and the same
app on Ray Serve."""
