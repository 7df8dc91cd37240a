"""The ChatRoom object: members, messages, history on join."""
