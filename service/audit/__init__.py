"""The audit trail: who changed what through the admin, SRE and reviewer APIs and the CLI."""
