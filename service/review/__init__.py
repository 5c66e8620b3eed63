"""The human review queue: answers that need a person, claimed under a lease, then decided."""
