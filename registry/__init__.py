"""SQLAlchemy registry database (series, families, initializers, adapted models) and MLflow store."""
