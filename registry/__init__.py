"""The registry: SQLAlchemy database (series, families, initializers, adapted models)
and the MLflow store."""
