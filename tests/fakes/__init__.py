"""Stand-ins for outside services that speak their real protocols over real sockets."""
