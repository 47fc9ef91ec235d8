"""Channel providers: one interface (`base.Provider`) and an adapter per provider. No database access here:
consent, caps, subscribe-message grants, guide tasks and the outbox live in the modules that call these."""

from .base import (
    CallbackRejected,
    Channel,
    InboundReply,
    OutboundMessage,
    Provider,
    Purpose,
    Quota,
    Reason,
    SendResult,
    StatusUpdate,
)

__all__ = ["CallbackRejected", "Channel", "InboundReply", "OutboundMessage", "Provider", "Purpose", "Quota",
           "Reason", "SendResult", "StatusUpdate"]
