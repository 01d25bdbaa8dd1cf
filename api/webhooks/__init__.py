"""Signed webhooks: endpoints the applications register, and the deliveries of events to them."""
