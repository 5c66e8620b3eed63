"""Per-key limits: requests and tokens per minute and concurrent requests, held across gateways."""
