"""Small shared tools: phone numbers, clock and zones, hashing, pagination."""
