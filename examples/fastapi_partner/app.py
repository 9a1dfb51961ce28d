"""A partner service on FastAPI: a "connect my Outlook" endpoint plus the mounted Mailivery receiver.

Run it (configuration from MAILBOX_FLOW_* variables):

    MAILBOX_FLOW_MAILIVERY_API_KEY=... MAILBOX_FLOW_WEBHOOK_SECRET=... python examples/fastapi_partner/app.py

then set the webhook URL in Mailivery's admin panel to https://<your host>/webhooks/mailivery/<secret>.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel

from mailbox_flow import DuplicateMailbox, InvalidInput, MailboxFlow, MailiveryError
from mailbox_flow.web import create_app as mailivery_receiver


class ConnectOutlook(BaseModel):
    email: str
    first_name: str
    last_name: str | None = None


def build_app(flow: MailboxFlow) -> FastAPI:
    """The partner's API: its own routes first, then the receiver (POST /webhooks/mailivery/{secret})."""
    app = FastAPI(title="Partner service")

    @app.post("/users/{user_id}/outlook", status_code=201)
    def connect_outlook(user_id: str, body: ConnectOutlook) -> dict[str, Any]:
        """Start connecting the user's Outlook mailbox; the client redirects the user to `redirect_to`."""
        try:
            mailbox = flow.request_connection(owner_id=user_id, email=body.email,
                                              first_name=body.first_name, last_name=body.last_name)
        except InvalidInput as exc:
            raise HTTPException(422, {"field": exc.field, "message": exc.message}) from None
        except DuplicateMailbox:
            raise HTTPException(409, "this mailbox is already being connected") from None
        except MailiveryError:
            raise HTTPException(502, "Mailivery is unavailable, please try again") from None
        return {"mailbox_id": str(mailbox.id), "state": mailbox.state.value,
                "redirect_to": mailbox.oauth_url}

    @app.get("/users/{user_id}/outlook")
    def outlook_status(user_id: str) -> list[dict[str, Any]]:
        """The user's mailboxes and where each one is."""
        return [{"mailbox_id": str(m.id), "email": m.email, "state": m.state.value}
                for m in flow.list(owner_id=user_id)]

    app.mount("/", mailivery_receiver(flow))
    return app


if __name__ == "__main__":
    import uvicorn

    from mailbox_flow.audit import configure_logging

    configure_logging("json")
    flow = MailboxFlow()
    flow.create_schema()
    # access_log=False: the webhook path carries the secret
    uvicorn.run(build_app(flow), host="127.0.0.1", port=8000, access_log=False)
