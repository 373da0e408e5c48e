"""The coordinator service (see DESIGN.md section 2); it arrives with the service issue."""
