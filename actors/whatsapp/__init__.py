"""WhatsApp: sending for one account, guarded by its lease.

`transport` is the send path (one Cloud API call, classified into sent, retry,
permanent or pause); the actors that own the lease and the outbound queue sit beside it.
"""
