"""Property-based fuzzing of the agent's input boundaries (Hypothesis); see conftest.py for the time bounds."""
