"""The HTTP API: REST views and routes, access rules, responses and the ASGI short path."""
