"""API keys: ``credentials`` (the key format, its hash and parsing, a stored key), ``store``
(queries), ``lookups`` (the budget for looking up ids the snapshot does not hold; pure) and
``cli`` (``loragate keys ...``). Principals and roles, which every domain checks, are in the kit
(``service.auth``)."""
