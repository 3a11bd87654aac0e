"""Talking to fal: the queue client, the model schemas, prices, and fal's webhook signatures."""
