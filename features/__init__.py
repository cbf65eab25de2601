"""Pure, typed transforms and the table schemas. No reads or writes here."""
