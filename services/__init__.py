"""durachat services: each is its domain code on top of the shared object runtime."""
