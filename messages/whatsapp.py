"""WhatsApp values: the account's lease, outbound messages as claimed, and what a webhook
delivery carries. Validated at the boundary like agent records."""

from typing import Annotated, Literal

from pydantic import Field

from messages._base import Message
from messages.agent import EpochMs
from messages.text import Label

MAX_TEXT_CHARS = 4096
"""The longest text message the Cloud API sends."""

PHONE_NUMBER_PATTERN = r"^\+?[0-9]{7,15}$"
"""An international number (E.164 digits), with an optional leading `+`."""

OutboundStatus = Literal["queued", "sending", "sent", "delivered", "read", "failed"]
DeliveryStatus = Literal["sent", "delivered", "read", "failed"]


class Lease(Message):
    """An account's sending lease as the backend holds it; `held` says whether the
    call that returned it holds it."""

    account_id: Label
    owner_id: Label
    epoch: Annotated[int, Field(ge=1)]
    """The fencing token: incremented at every change of owner."""
    expires_at: EpochMs
    held: bool = False


class OutboundText(Message):
    """A text message for a contact, as `whatsapp send` and job replies queue it."""

    to: Annotated[str, Field(pattern=PHONE_NUMBER_PATTERN)]
    text: Annotated[str, Field(min_length=1, max_length=MAX_TEXT_CHARS)]


class ClaimedMessage(OutboundText):
    """An outbound message claimed for sending, under `claim_token`."""

    id: Annotated[str, Field(min_length=1)]
    attempts: Annotated[int, Field(ge=0)]
    claim_token: Annotated[str, Field(min_length=1)]


class InboundMessage(Message):
    """A message a contact sent to the account, from a webhook delivery."""

    provider_id: Annotated[str, Field(min_length=1)]
    """Meta's message id: the dedupe key."""
    sender: Annotated[str, Field(alias="from", min_length=1)]
    text: Annotated[str, Field(max_length=MAX_TEXT_CHARS)]
    timestamp: EpochMs


class StatusUpdate(Message):
    """What Meta says happened to a message the account sent (its wamid)."""

    provider_id: Annotated[str, Field(min_length=1)]
    status: DeliveryStatus
    timestamp: EpochMs
    error: str | None = None


class WebhookRecorded(Message):
    """What recording one webhook delivery did."""

    messages: int
    statuses: int
    duplicates: int


class LeaseHeld(Message):
    """LeaseActor -> WhatsAppActor: the lease is held at `epoch` until `deadline_s`
    (monotonic): the last successful renewal + TTL - margin. Past it, send nothing."""

    epoch: int
    deadline_s: float


class SendStep(Message):
    """WhatsAppActor -> itself: take the next step (a claim or a send) now."""


class SenderFenced(Message):
    """WhatsAppActor -> LeaseActor: the backend refused a claim or a mark as stale; the
    sender stopped sending. The LeaseActor checks the lease at once."""

    sender_id: str
    reason: str


class LeaseStatus(Message):
    """The LeaseActor's view, for /health."""

    account_id: str
    held: bool
    owner_id: str | None
    epoch: int | None
    expires_at: int | None
    last_renewed_at: int | None
    last_error: str | None


class WhatsAppStatus(Message):
    """The WhatsAppActor's view, for /health."""

    sending: bool
    paused: bool
    paused_until: int | None
    sent: int
    failed: int
    last_error: str | None
