"""The service's own scheduler: periodic jobs (segment sweeps and refreshes, points and coupon
expiry, tier evaluation) run in `orchard serve`, leased through the database so two processes
never run the same job at once."""
