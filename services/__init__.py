"""gristmill services: planner, worker and coordinator. They import gristmill, never each other."""
