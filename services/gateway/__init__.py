"""The gateway: web client, HTTP API and WebSockets; holds sockets, no object state."""
