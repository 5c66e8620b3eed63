"""The hot path: requests in, answers out, records drafted."""
