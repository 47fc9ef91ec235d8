"""Messages to members (SPEC C1–C3, J3): templates, the respect rules (consent, caps, quiet hours,
exclusions) decided and recorded per message, and the transactional outbox that providers send from."""
