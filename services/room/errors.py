"""What the room refuses: one small exception class per refusal (handlers map them to codes)."""


class RoomError(Exception):
    """A command the room refuses."""


class NotAMember(RoomError):
    """The session has not joined the room (or has left it)."""


class NameTooLong(RoomError):
    """A member name longer than the room allows."""


class MessageTooLong(RoomError):
    """A message longer than the room allows."""


class NoSuchRoom(RoomError):
    """A private room id that was never created."""


class AlreadyExists(RoomError):
    """The room was created before."""


class NameReserved(RoomError):
    """A member name the room uses for itself (the AI, the system)."""


class NoSuchAiReply(RoomError):
    """An AI reply the room is not waiting for (finished, failed, or never asked), or one
    not at the stage the command needs (text for a reply that has not started)."""


class AiReplyConflict(RoomError):
    """Text that does not continue the reply where it stands."""
