"""``qtune-report``'s parts: collecting run summaries, tables, figures and the token viewer."""
