"""The upload service: tus uploads into a JetStream object store, one object per upload."""
