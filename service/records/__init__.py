"""The request record, one folder for its whole trip: drafted on the hot path (``draft``),
kept (``keeper``: appended to the local ``spool``, or committed at once for a held answer),
shipped to the database (``shipper``), stored and pruned (``store``), and its bodies redacted
(``redaction``). ``service`` builds the parts; what a record carries for another domain (a
review item) is written by a function the composition root hands in."""
