"""Topic-based subscriptions: matching, the outbox, delivery to rest-hooks and websockets, operations."""
