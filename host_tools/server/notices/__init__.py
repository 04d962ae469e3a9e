"""Notices: alerts and customers' low-balance messages delivered outside the server
(docs/alerts.md): an outbox with retries and dead letters (outbox.py), HMAC-signed webhooks
and an SMS gateway adapter (channels.py, signature.py), the courier that sends
(courier.py), and the cards linked to a phone number (phones.py).
"""
