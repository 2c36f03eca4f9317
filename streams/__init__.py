"""The faust-streaming app: topics, agents per role, web views. Thin by design."""
