"""Document modifiers and the Modify stage."""
