"""Pure subscription routing logic: topics, matching, notifications."""
