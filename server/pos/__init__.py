"""POS integration (DESIGN §10): receipt intake, vendor adapters, orders out to the till."""
