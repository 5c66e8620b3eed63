"""Offline evaluation: packs of cases per route, held out of training."""
