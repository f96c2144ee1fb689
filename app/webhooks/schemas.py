"""Request and response shapes of ``/api/v1/webhooks``."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, field_validator

from app.schemas.common import StrictModel
from app.webhooks.delivery import URL_MAX
from app.webhooks.events import DeliveryStatus, SubscriptionStatus, WebhookEvent


class WebhookCreate(StrictModel):
    url: str = Field(
        min_length=1,
        max_length=URL_MAX,
        description="http(s) URL the events are POSTed to. A host that resolves to a "
        "loopback, private, link-local, multicast or reserved address is refused.",
        examples=["https://hooks.example.com/batchd"],
    )
    events: list[WebhookEvent] | None = Field(
        None,
        min_length=1,
        max_length=len(WebhookEvent),
        description="The event types to receive; omitted or null: every type.",
    )
    all_batches: bool = Field(
        False, description="Every batch's events, not only your own (admins only)."
    )

    @field_validator("events")
    @classmethod
    def _unique(cls, value: list[WebhookEvent] | None) -> list[WebhookEvent] | None:
        return None if value is None else list(dict.fromkeys(value))


class WebhookUpdate(StrictModel):
    url: str | None = Field(None, min_length=1, max_length=URL_MAX)
    events: list[WebhookEvent] | None = Field(None, min_length=1, max_length=len(WebhookEvent))
    status: SubscriptionStatus | None = Field(
        None,
        description="``active`` re-enables a disabled subscription (its failure count "
        "starts over); ``disabled`` stops deliveries.",
    )

    @field_validator("events")
    @classmethod
    def _unique(cls, value: list[WebhookEvent] | None) -> list[WebhookEvent] | None:
        return None if value is None else list(dict.fromkeys(value))


class WebhookOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    url: str
    events: list[WebhookEvent] | None = Field(description="null: every event type.")
    all_batches: bool
    status: SubscriptionStatus
    disabled_reason: str | None = None
    consecutive_failures: int = Field(
        0, description="Deliveries given up in a row; 50 disable the subscription."
    )
    created_at: datetime


class WebhookCreated(WebhookOut):
    secret: str = Field(
        description="``whsec_…``: verify deliveries with it. Shown only in this response."
    )


class DeliveryOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    subscription_id: int
    event: str = Field(description="A ``WebhookEvent`` type, or ``webhook.ping``.")
    batch_id: int | None
    msg_id: str = Field(description="The ``webhook-id`` header of every attempt.")
    status: DeliveryStatus
    attempts: int
    last_status_code: int | None
    last_error: str | None
    next_attempt_at: datetime | None
    delivered_at: datetime | None
    created_at: datetime
