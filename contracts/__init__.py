"""Every message that crosses NATS, and the subjects they travel on.

No service re-declares a payload: gateway, room and the services to come import from here.
"""
