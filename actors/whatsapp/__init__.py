"""WhatsApp: sending for one account, guarded by its lease.

`transport` is the send path (one Cloud API call, classified into sent, retry,
permanent or pause); the actors that own the lease and the outbound queue sit beside it.
"""

from actors.whatsapp.transport import (
    CloudTransport,
    ConsoleTransport,
    SendResult,
    Transport,
    classify,
)

__all__ = ["CloudTransport", "ConsoleTransport", "SendResult", "Transport", "classify"]
