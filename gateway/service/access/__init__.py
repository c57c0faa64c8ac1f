"""Who may do what: request contexts, the one authorization decision, clients, tokens and keys."""
