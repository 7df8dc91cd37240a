"""The object runtime shared by every service: partitions, mailboxes, event store, output gate."""
