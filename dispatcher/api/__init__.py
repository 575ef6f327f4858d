"""The ingress: ``create_app(settings)`` builds the FastAPI application."""
