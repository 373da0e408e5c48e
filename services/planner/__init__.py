"""The planner service: validates submissions, plans them, publishes the first manifests."""
